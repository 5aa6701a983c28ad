"""Trainer stdout parsing and run-directory trust, on real diffusion-pipe/DeepSpeed lines."""

from __future__ import annotations

from pathlib import Path

from stages.trainer.log_parser import (
    CompleteLine,
    EpochLine,
    QuitLine,
    ResumedLine,
    SavedModelLine,
    StepLine,
    parse_line,
)
from stages.trainer.progress import ProgressTracker
from stages.trainer.run_dirs import newest_checkpoint, saved_models

# Lines as diffusion-pipe and DeepSpeed's pipeline engine print them.
REAL_LINES = {
    "steps: 120 loss: 0.0873 iter time (s): 3.412 samples/sec: 1.172": StepLine(
        120, 0.0873, 3.412, 1.172
    ),
    "[2026-01-01 10:00:00,000] [INFO] [logging.py:107:log_dist] [Rank 0] steps: 7 loss: 0.5000 "
    "iter time (s): 0.050 samples/sec: 20.000": StepLine(7, 0.5, 0.05, 20.0),
    "Started new epoch: 3": EpochLine(3),
    "Saving model to directory epoch10": SavedModelLine("epoch10"),
    "Resuming training from checkpoint. Resuming at epoch: 4, step: 31": ResumedLine(4, 31),
    "TRAINING COMPLETE!": CompleteLine(),
    "Manually quitting": QuitLine(),
}


def test_real_lines_parse() -> None:
    """GIVEN lines the real trainer prints WHEN parsed THEN each gives its typed record."""
    for line, expected in REAL_LINES.items():
        assert parse_line(line) == expected, line
    assert parse_line("[INFO] Using gloo backend") is None


def test_eta_uses_the_moving_average_of_step_times() -> None:
    """GIVEN steps of 1 s then 3 s WHEN the window holds only the latter THEN ETA uses 3 s."""
    tracker = ProgressTracker(total_steps=10, window=2)
    for step, t in enumerate([1.0, 1.0, 3.0, 3.0], start=1):
        tracker.record(step, t)
    assert tracker.eta_s == 18.0 and tracker.percent == 40.0


def _checkpoint(run_dir: Path, step: int, *, latest: bool = True) -> None:
    tag = run_dir / f"global_step{step}"
    tag.mkdir(parents=True)
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"x")
    if latest:
        (run_dir / "latest").write_text(f"global_step{step}")


def test_resume_skips_run_dirs_without_a_complete_checkpoint(tmp_path: Path) -> None:
    """GIVEN an old run with a checkpoint and a newer one killed before its first THEN the old."""
    old, new = tmp_path / "20260101_10-00-00", tmp_path / "20260101_11-00-00"
    _checkpoint(old, 20)
    _checkpoint(new, 5, latest=False)  # killed mid-save: no `latest` written yet
    found = newest_checkpoint(tmp_path)
    assert found is not None and (found.run_dir, found.step) == (old, 20)


def test_latest_pointing_at_a_missing_tag_is_not_trusted(tmp_path: Path) -> None:
    """GIVEN ``latest`` naming a folder that is not there THEN no checkpoint is offered."""
    run = tmp_path / "20260101_10-00-00"
    run.mkdir()
    (run / "latest").write_text("global_step40")
    assert newest_checkpoint(tmp_path) is None


def test_saved_models_need_the_lora_file(tmp_path: Path) -> None:
    """GIVEN epoch folders, one incomplete WHEN listed THEN only complete ones, newest last."""
    run = tmp_path / "run"
    for name in ("epoch5", "epoch10", "epoch15"):
        (run / name).mkdir(parents=True)
    (run / "epoch5" / "adapter_model.safetensors").write_bytes(b"x")
    (run / "epoch10" / "adapter_model.safetensors").write_bytes(b"x")
    assert [m[2].name for m in saved_models(run, "adapter_model.safetensors")] == [
        "epoch5",
        "epoch10",
    ]


async def test_a_loss_that_stays_nan_stops_the_job_for_good(tmp_path: Path) -> None:
    """GIVEN step lines WHEN the loss is NaN for 19 steps, then finite, then NaN for 20 THEN
    only the 20th consecutive NaN stops training, as a permanent failure naming the lr."""
    import asyncio

    import pytest

    from contracts.enums import ModelType
    from contracts.ledger import Ledger
    from contracts.request import JobRequest
    from infra.settings import Settings
    from infra.volume import JobStore, utcnow
    from stages.context import StageContext
    from stages.train import Diverged, _Watch

    async def ignore(*_: object) -> None:
        return None

    store = JobStore(tmp_path)
    now = utcnow()
    request = JobRequest.model_validate(
        {
            "input": {
                "model_type": "tiny",
                "dataset": {"type": "precaptioned", "images_url": "https://x/y.zip"},
            }
        }
    )
    ctx = StageContext(
        job_id="j",
        request=request.input,
        paths=store.paths("j"),
        store=store,
        settings=Settings(queue_url="q", volume=tmp_path),
        ledger=Ledger(job_id="j", model_type=ModelType.TINY, created_at=now, updated_at=now),
        emit=ignore,
        stop_requested=asyncio.Event(),
    )
    watch = _Watch(ctx, total_steps=100, resumed_tag=None)
    step = 0

    async def feed(loss: str, count: int) -> None:
        nonlocal step
        for _ in range(count):
            step += 1
            await watch.line(f"steps: {step} loss: {loss} iter time (s): 0.1 samples/sec: 1.0")

    await feed("nan", 19)
    await feed("0.5", 1)
    await feed("nan", 19)
    with pytest.raises(Diverged) as caught:
        await feed("nan", 1)
    assert caught.value.field == "input.training.learning_rate" and not caught.value.retryable


def test_only_the_finished_runs_shared_memory_is_released(
    tmp_path: Path, monkeypatch: object
) -> None:
    """GIVEN DeepSpeed buffers of two runs in /dev/shm WHEN one run is released THEN only its
    buffers go (DeepSpeed never unlinks them; every CPU job used to leak 66 MB)."""
    from stages.trainer import shm

    monkeypatch.setattr(shm, "SHM_DIR", tmp_path)  # type: ignore[attr-defined]
    mine = tmp_path / "deepspeed_allreduce_buffer_0_127.0.0.1_41234_0"
    other = tmp_path / "deepspeed_allreduce_buffer_0_127.0.0.1_41235_0"
    mine.write_bytes(b"x")
    other.write_bytes(b"x")
    assert shm.release_shared_memory(41234) == 1
    assert not mine.exists() and other.exists()


def test_the_guard_finds_the_runs_master_port_in_its_command() -> None:
    """GIVEN the trainer command WHEN the guard cleans up after it THEN it knows the run's port."""
    from stages.trainer.guard import _master_port

    argv = ["deepspeed", "--num_gpus=1", "train.py", "--deepspeed", "--master_port", "4242"]
    assert _master_port(argv) == 4242
    assert _master_port(["deepspeed", "train.py"]) is None
