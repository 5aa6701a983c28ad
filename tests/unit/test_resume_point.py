"""Where a retried train stage resumes: torn saves removed, final checkpoints never resumed.

The run dirs are laid out as diffusion-pipe leaves them (``utils/saver.py`` at 8f83dbf: a model
folder holds ``tmp/`` until its save ends; train.py's client state, with the loader's epoch,
sits in each checkpoint's ``mp_rank_00_model_states.pt``), written with torch as DeepSpeed does.
"""

from __future__ import annotations

from pathlib import Path

import toml
import torch

from stages.trainer.resume_point import MODEL_STATES, client_state, plan_resume
from stages.trainer.run_dirs import newest_checkpoint, saved_models

LORA = "adapter_model.safetensors"
EPOCHS = 3


def _run(tmp_path: Path) -> tuple[Path, Path]:
    output = tmp_path / "output"
    run_dir = output / "20260101_10-00-00"
    run_dir.mkdir(parents=True)
    train_toml = tmp_path / "train.toml"
    train_toml.write_text(toml.dumps({"epochs": EPOCHS, "save_every_n_epochs": 1}))
    return output, train_toml


def _checkpoint(run_dir: Path, step: int, loader_epoch: int, *, latest: bool = True) -> None:
    tag = run_dir / f"global_step{step}"
    tag.mkdir()
    state = {"step": step, "custom_loader": {"epoch": loader_epoch, "num_batches_pulled": 0}}
    torch.save({"module": {"w": torch.zeros(2)}, **state}, tag / MODEL_STATES)
    if latest:
        (run_dir / "latest").write_text(tag.name)


def _model(run_dir: Path, name: str, *, torn: bool = False) -> None:
    folder = run_dir / name
    folder.mkdir()
    (folder / LORA).write_bytes(b"half" if torn else b"whole")
    if torn:
        (folder / "tmp").mkdir()
        (folder / "tmp" / "state_dict_0.bin").write_bytes(b"x")


def test_a_torn_save_is_not_a_model_and_is_removed_before_resuming(tmp_path: Path) -> None:
    """GIVEN epoch1 saved, a checkpoint at step 4 and epoch2 killed mid-save (tmp/ + half LoRA)
    WHEN listed and planned THEN epoch2 is not a saved model, the plan resumes from step 4, and
    epoch2 is gone, so the resumed trainer's makedirs(exist_ok=False) cannot fail on it."""
    output, train_toml = _run(tmp_path)
    run_dir = output / "20260101_10-00-00"
    _model(run_dir, "epoch1")
    _checkpoint(run_dir, 4, loader_epoch=2)
    _model(run_dir, "epoch2", torn=True)
    assert [m[2].name for m in saved_models(run_dir, LORA)] == ["epoch1"]

    point = plan_resume(output, train_toml, LORA)

    assert point.checkpoint is not None and point.checkpoint.tag == "global_step4"
    assert not point.finished and point.removed == ("epoch2",)
    assert not (run_dir / "epoch2").exists() and (run_dir / "epoch1" / LORA).is_file()


def test_a_final_checkpoint_with_its_model_saved_means_finished(tmp_path: Path) -> None:
    """GIVEN the checkpoint train.py writes after its loop (loader at epoch E+1) and epoch E
    saved WHEN planned THEN finished: nothing is launched, so no epoch E+1 is trained."""
    output, train_toml = _run(tmp_path)
    run_dir = output / "20260101_10-00-00"
    _checkpoint(run_dir, 8, loader_epoch=3, latest=False)
    _model(run_dir, f"epoch{EPOCHS}")
    _checkpoint(run_dir, 12, loader_epoch=EPOCHS + 1)

    point = plan_resume(output, train_toml, LORA)

    assert point.finished and point.checkpoint is not None and point.checkpoint.step == 12
    assert (run_dir / "latest").read_text() == "global_step12"


def test_a_final_checkpoint_without_its_model_rolls_back_one_checkpoint(tmp_path: Path) -> None:
    """GIVEN a final checkpoint and the final model torn (killed while saving it, after the
    checkpoint) WHEN planned THEN ``latest`` moves back to the checkpoint before it and the
    final tag is removed: the resume retrains the last stretch and saves epoch E itself."""
    output, train_toml = _run(tmp_path)
    run_dir = output / "20260101_10-00-00"
    _checkpoint(run_dir, 8, loader_epoch=3, latest=False)
    _checkpoint(run_dir, 12, loader_epoch=EPOCHS + 1)
    _model(run_dir, f"epoch{EPOCHS}", torn=True)

    point = plan_resume(output, train_toml, LORA)

    assert point.checkpoint is not None and point.checkpoint.tag == "global_step8"
    assert not point.finished and point.rolled_back_from == "global_step12"
    assert (run_dir / "latest").read_text() == "global_step8"
    assert not (run_dir / "global_step12").exists() and not (run_dir / "epoch3").exists()
    again = newest_checkpoint(output)
    assert again is not None and again.tag == "global_step8"


def test_a_final_checkpoint_with_nothing_before_it_starts_over(tmp_path: Path) -> None:
    """GIVEN only a final checkpoint and no final model WHEN planned THEN no resume at all, and
    the run dir is no longer resumable (its ``latest`` is gone)."""
    output, train_toml = _run(tmp_path)
    run_dir = output / "20260101_10-00-00"
    _checkpoint(run_dir, 12, loader_epoch=EPOCHS + 1)

    point = plan_resume(output, train_toml, LORA)

    assert point.checkpoint is None and point.rolled_back_from == "global_step12"
    assert newest_checkpoint(output) is None


def test_max_steps_makes_a_checkpoint_final_too(tmp_path: Path) -> None:
    """GIVEN max_steps = 6 and the checkpoint at step 6 with step6/ saved THEN finished."""
    output, train_toml = _run(tmp_path)
    train_toml.write_text(toml.dumps({"epochs": 100, "max_steps": 6, "save_every_n_epochs": 1}))
    run_dir = output / "20260101_10-00-00"
    _checkpoint(run_dir, 6, loader_epoch=2)
    _model(run_dir, "step6")
    assert plan_resume(output, train_toml, LORA).finished


def test_an_unreadable_checkpoint_state_is_resumed_as_before(tmp_path: Path) -> None:
    """GIVEN a checkpoint whose model-states file is not torch's WHEN planned THEN a plain
    resume (the trainer itself decides), never a crash of the worker."""
    output, train_toml = _run(tmp_path)
    run_dir = output / "20260101_10-00-00"
    _checkpoint(run_dir, 4, loader_epoch=2)
    (run_dir / "global_step4" / MODEL_STATES).write_bytes(b"not a torch file")
    checkpoint = newest_checkpoint(output)
    assert checkpoint is not None and client_state(checkpoint) is None
    point = plan_resume(output, train_toml, LORA)
    assert point.checkpoint == checkpoint and not point.finished
