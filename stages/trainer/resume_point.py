"""Where a retried train stage starts: a checkpoint loraq can trust, and never one past the end.

Two upstream behaviours make a plain ``--resume_from_checkpoint`` wrong after a crash:

- A save killed half way leaves ``epochN/tmp`` (``run_dirs.is_torn``); the resumed trainer
  raises ``FileExistsError`` when it saves ``epochN`` again (``utils/saver.py`` line 64 at
  8f83dbf, ``os.makedirs(tmp_dir, exist_ok=False)``). Torn folders are removed first: the
  checkpoint they came after is older than them, so the resumed run writes them again.
- The checkpoint train.py writes after its loop (lines 967-969) holds the data loader at
  epoch ``epochs + 1``. Resuming from it does not stop: the loop (lines 915-965) trains that
  whole extra epoch and saves ``epoch{E+1}``. So a final checkpoint is never resumed from: if
  the final model is saved, training is finished; if not (killed while saving it), ``latest``
  is moved back to the checkpoint before, or the run starts over when there is none.
"""

from __future__ import annotations

import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.volume import atomic_write_text
from stages.trainer.run_dirs import (
    LATEST_FILE,
    Checkpoint,
    newest_checkpoint,
    saved_models,
    step_checkpoints,
    torn_saves,
)

# DeepSpeed's engine file of rank 0 in every checkpoint; train.py's client state is merged into
# it (``deepspeed/runtime/engine.py`` ``_save_checkpoint``: ``state.update(client_state)``).
MODEL_STATES = "mp_rank_00_model_states.pt"


@dataclass(frozen=True)
class ResumePoint:
    checkpoint: Checkpoint | None
    # The checkpoint is the final one and the final model is saved: nothing is left to train.
    finished: bool = False
    removed: tuple[str, ...] = ()
    rolled_back_from: str | None = None


@dataclass(frozen=True)
class ClientState:
    step: int
    loader_epoch: int


def plan_resume(output_dir: Path, train_toml: Path, lora_file: str) -> ResumePoint:
    checkpoint = newest_checkpoint(output_dir)
    if checkpoint is None:
        return ResumePoint(None)
    removed = remove_torn_saves(checkpoint.run_dir)
    config = _read_toml(train_toml)
    state = client_state(checkpoint)
    if state is None or not is_final(state, config):
        return ResumePoint(checkpoint, removed=removed)
    final_name = _final_model_name(state, config)
    names = {model_dir.name for _, _, model_dir in saved_models(checkpoint.run_dir, lora_file)}
    if final_name in names:
        return ResumePoint(checkpoint, finished=True, removed=removed)
    earlier = [found for found in step_checkpoints(checkpoint.run_dir) if found.step < state.step]
    if earlier:
        atomic_write_text(checkpoint.run_dir / LATEST_FILE, earlier[-1].tag)
        shutil.rmtree(checkpoint.run_dir / checkpoint.tag, ignore_errors=True)
        return ResumePoint(earlier[-1], removed=removed, rolled_back_from=checkpoint.tag)
    (checkpoint.run_dir / LATEST_FILE).unlink(missing_ok=True)
    return ResumePoint(None, removed=removed, rolled_back_from=checkpoint.tag)


def remove_torn_saves(run_dir: Path) -> tuple[str, ...]:
    torn = torn_saves(run_dir)
    for model_dir in torn:
        shutil.rmtree(model_dir)
    return tuple(model_dir.name for model_dir in torn)


def client_state(checkpoint: Checkpoint) -> ClientState | None:
    """train.py's ``step`` and data loader epoch in the checkpoint, or None when unreadable.

    ``weights_only`` loading suffices (plain dicts, tensors, strings) and ``mmap`` reads only
    what is touched, so a checkpoint holding optimizer state is not read whole.
    """
    import torch  # the worker imports torch only where a checkpoint is read

    path = checkpoint.run_dir / checkpoint.tag / MODEL_STATES
    try:
        state = torch.load(path, weights_only=True, mmap=True, map_location="cpu")
        return ClientState(int(state["step"]), int(state["custom_loader"]["epoch"]))
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError):
        return None


def is_final(state: ClientState, config: dict[str, Any]) -> bool:
    max_steps = config.get("max_steps")
    if isinstance(max_steps, int) and state.step >= max_steps:
        return True
    return state.loader_epoch > int(config.get("epochs", 1))


def _final_model_name(state: ClientState, config: dict[str, Any]) -> str:
    max_steps = config.get("max_steps")
    if isinstance(max_steps, int) and state.step >= max_steps:
        return f"step{state.step}"
    return f"epoch{int(config.get('epochs', 1))}"


def _read_toml(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        return tomllib.load(f)
