"""Why a training run failed for good: the same settings would fail the same way again.

Each is ``Permanent``: retrying burns GPU hours for the same result, so the job fails once, with
the field to change and the values that led there.
"""

from __future__ import annotations

from contracts.enums import ErrorCode
from contracts.request import TrainingSpec
from stages.errors import Permanent
from stages.registry import ModelSpec


class Diverged(Permanent):
    """The loss has been NaN or infinite for too many steps in a row.

    diffusion-pipe trains on regardless, burning GPU hours on a LoRA that is already garbage;
    the same settings would diverge again, so the job fails for good and says which to change.
    """

    def __init__(self, steps: int) -> None:
        super().__init__(
            ErrorCode.TRAINING_DIVERGED,
            f"the loss was not finite for {steps} steps in a row; lower the learning rate "
            "or use a higher-precision dtype",
            field="input.training.learning_rate",
        )


class LoraDiverged(Permanent):
    """The saved LoRA holds NaN or infinity: the same settings would produce it again."""

    def __init__(self, training: TrainingSpec, saved: str, bad: int, count: int) -> None:
        super().__init__(
            ErrorCode.TRAINING_DIVERGED,
            f"the LoRA saved as {saved} holds non-finite values in {bad} of its {count} "
            f"tensors; lower training.learning_rate ({training.learning_rate}) or "
            f"training.optimizer_weight_decay ({training.optimizer_weight_decay})",
            field="input.training.learning_rate",
        )


class OutOfMemory(Permanent):
    """CUDA ran out of memory: the same settings fail the same way on every retry."""

    def __init__(self, spec: ModelSpec, training: TrainingSpec, text: str) -> None:
        knobs = [f"training.resolution (now {training.resolution or spec.default_resolution})"]
        if spec.videos:
            knobs.append(f"training.frame_buckets (now {training.frame_buckets})")
        knobs.append(f"training.batch_size (now {training.batch_size})")
        if spec.block_swap:
            knobs.append("training.blocks_to_swap (offloads transformer blocks to the CPU)")
        super().__init__(
            ErrorCode.OUT_OF_MEMORY,
            f"the GPU ran out of memory ({text[:300]}); lower " + ", ".join(knobs),
            field="input.training.resolution",
        )
