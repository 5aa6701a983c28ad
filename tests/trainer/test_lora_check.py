"""A LoRA holding NaN or infinity is refused before delivery, with what to change."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from contracts.enums import ErrorCode
from contracts.request import TrainingSpec
from stages.lora_check import nonfinite_tensors
from stages.train import LoraDiverged


def _lora(path: Path, poison: float | None) -> Path:
    down = torch.zeros(4, 8, dtype=torch.bfloat16)
    up = torch.ones(8, 4, dtype=torch.float32)
    if poison is not None:
        up[3, 2] = poison
    save_file(
        {"a.lora_down.weight": down, "a.lora_up.weight": up, "steps": torch.tensor([3])}, path
    )
    return path


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), float("-inf")])
def test_one_non_finite_value_is_found_by_tensor_name(tmp_path: Path, poison: float) -> None:
    """GIVEN a saved LoRA with one non-finite value in one tensor WHEN checked THEN that tensor
    alone is named, out of the three (the integer tensor is not a float and is skipped)."""
    bad, count = nonfinite_tensors(_lora(tmp_path / "adapter_model.safetensors", poison))
    assert (bad, count) == (["a.lora_up.weight"], 3)


def test_a_finite_lora_passes(tmp_path: Path) -> None:
    assert nonfinite_tensors(_lora(tmp_path / "adapter_model.safetensors", None)) == ([], 3)


def test_the_failure_names_the_settings_to_change() -> None:
    """GIVEN a diverged LoRA WHEN refused THEN training_diverged names the learning rate and the
    weight decay with their values, on the learning-rate field."""
    training = TrainingSpec.model_validate({"learning_rate": 0.5, "optimizer_weight_decay": 0.9})
    failure = LoraDiverged(training, "epoch2", 1, 3)
    assert failure.code is ErrorCode.TRAINING_DIVERGED
    assert failure.field == "input.training.learning_rate"
    assert "learning_rate (0.5)" in failure.message and "weight_decay (0.9)" in failure.message
