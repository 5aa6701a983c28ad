"""How the train stage stops a trainer, against real processes that behave as train.py does.

The stand-in trainers below are Python processes printing diffusion-pipe's own lines, and they
honour ``save_quit`` exactly where upstream does: only after a whole step (``utils/saver.py``
``process_step`` at 8f83dbf). They run through the same guard and process group as the real one.
"""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path

from contracts.enums import ModelType
from contracts.ledger import Ledger
from contracts.request import JobRequest
from infra.settings import Settings
from infra.volume import JobStore, utcnow
from stages.context import StageContext
from stages.train import _supervise, _Watch
from stages.trainer.launcher import SAVE_QUIT_FILE, Launch, TrainerProcess, free_port, trainer_env
from stages.trainer.log_parser import CheckpointSavingLine, OutOfMemoryLine, parse_line
from stages.trainer.stop_cost import StopClock

RUN_DIR = "20260101_10-00-00"


async def _ignore(*_: object) -> None:
    return None


def _ctx(tmp_path: Path, grace_s: float = 90.0) -> StageContext:
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
    paths = store.paths("j")
    (paths.output / RUN_DIR).mkdir(parents=True)
    return StageContext(
        job_id="j",
        request=request.input,
        paths=paths,
        store=store,
        settings=Settings(queue_url="q", volume=tmp_path, shutdown_grace_s=grace_s),
        ledger=Ledger(job_id="j", model_type=ModelType.TINY, created_at=now, updated_at=now),
        emit=_ignore,
        stop_requested=asyncio.Event(),
    )


class _StopAfterFirstStep(_Watch):
    """The worker's shutdown arrives while the step after step 1 is running."""

    async def line(self, text: str) -> None:
        await super().line(text)
        if self.progress.step == 1:
            self.ctx.stop_requested.set()


async def _supervised(ctx: StageContext, script: str) -> tuple[bool, int, _Watch]:
    run_dir = ctx.paths.output / RUN_DIR
    launch = Launch(
        argv=[sys.executable, "-c", textwrap.dedent(script), str(run_dir)],
        cwd=run_dir,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        master_port=free_port(),
    )
    watch = _StopAfterFirstStep(ctx, total_steps=2, resumed_tag=None)
    process = await TrainerProcess.start(launch)
    try:
        interrupted = await _supervise(ctx, process, watch, ctx.paths.root / "train.log")
        return interrupted, await process.wait(), watch
    finally:
        process.finish()


# The last step was already running when save_quit appeared: train.py finishes its loop and
# prints TRAINING COMPLETE! without reading the file again.
_FINISHES_ANYWAY = """
    import pathlib, sys, time
    run_dir = pathlib.Path(sys.argv[1])
    print("steps: 1 loss: 0.5 iter time (s): 0.1 samples/sec: 10.0", flush=True)
    while not (run_dir / "save_quit").exists():
        time.sleep(0.01)
    print("steps: 2 loss: 0.4 iter time (s): 0.1 samples/sec: 10.0", flush=True)
    print("Saving model to directory epoch1", flush=True)
    print("TRAINING COMPLETE!", flush=True)
"""


async def test_a_stop_that_races_the_end_is_not_an_interruption(tmp_path: Path) -> None:
    """GIVEN a stop request during the last step WHEN the trainer then prints TRAINING
    COMPLETE! THEN the run is complete, not interrupted: a retry would resume from the final
    checkpoint, and upstream's loop would train a whole extra epoch."""
    ctx = _ctx(tmp_path)
    interrupted, code, watch = await _supervised(ctx, _FINISHES_ANYWAY)
    assert (interrupted, code, watch.complete) == (False, 0, True)


# A step of 1,000 s: the save_quit could be read only after the step ends, far past the grace.
_SLOW_STEPS = """
    import pathlib, sys, time
    run_dir = pathlib.Path(sys.argv[1])
    print("steps: 1 loss: 0.5 iter time (s): 1000.0 samples/sec: 0.001", flush=True)
    while not (run_dir / "save_quit").exists():
        time.sleep(0.01)
    print("Manually quitting", flush=True)
"""


async def test_a_save_quit_that_cannot_finish_in_the_grace_is_not_asked_for(
    tmp_path: Path,
) -> None:
    """GIVEN measured steps of 1,000 s and a 60 s grace WHEN the worker stops THEN no save_quit
    is requested (it could never be read in time): the trainer is killed at once and the stage
    reports an interruption, leaving the grace to the hand-back."""
    ctx = _ctx(tmp_path, grace_s=60.0)
    interrupted, code, watch = await _supervised(ctx, _SLOW_STEPS)
    assert interrupted and code < 0 and not watch.quit
    assert not (ctx.paths.output / RUN_DIR / SAVE_QUIT_FILE).exists()


async def test_a_save_quit_that_fits_is_asked_for(tmp_path: Path) -> None:
    """GIVEN steps of 0.1 s WHEN the worker stops THEN save_quit is requested and obeyed."""
    ctx = _ctx(tmp_path, grace_s=60.0)
    interrupted, code, watch = await _supervised(ctx, _SLOW_STEPS.replace("1000.0", "0.1"))
    assert interrupted and code == 0 and watch.quit


def test_the_stop_clock_adds_the_step_in_flight_and_the_measured_checkpoint() -> None:
    """GIVEN a 10 s step, then a checkpoint whose next step line came 25 s later WHEN asked
    3 s after that line THEN a stop costs the 7 s left of the step plus the 15 s checkpoint."""
    now = [0.0]
    clock = StopClock(lambda: now[0])
    assert clock.stop_now_s() is None and clock.worst_stop_s() is None
    clock.step_done(10.0, 10.0)
    now[0] = 1.0
    clock.checkpoint_started()
    now[0] = 26.0
    clock.step_done(10.0, 10.0)
    now[0] = 29.0
    assert clock.checkpoint_s == 15.0
    assert clock.stop_now_s() == 7.0 + 15.0
    assert clock.worst_stop_s() == 25.0


def test_deepspeed_checkpoint_and_torch_oom_lines_parse() -> None:
    """GIVEN DeepSpeed's checkpoint announcement and torch's OOM traceback line THEN typed."""
    line = (
        "[2026-01-01 10:00:00,000] [INFO] [logging.py:107:log_dist] [Rank 0] [Torch] "
        "Checkpoint global_step40 is about to be saved!"
    )
    assert parse_line(line) == CheckpointSavingLine("global_step40")
    oom = (
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a "
        "total capacity of 23.55 GiB of which 1.2 GiB is free."
    )
    assert isinstance(parse_line(oom), OutOfMemoryLine)


def test_nccl_p2p_is_disabled_only_where_upstream_says_it_is_needed(tmp_path: Path) -> None:
    """GIVEN an RTX 4090 host, an H100 host and an operator override WHEN the trainer's
    environment is built THEN NCCL_P2P/IB_DISABLE only on the RTX 4000-series card or when
    forced; NVLink hosts keep peer-to-peer."""
    settings = Settings(queue_url="q", volume=tmp_path)
    rtx = trainer_env(settings, base={}, gpus=("NVIDIA GeForce RTX 4090",))
    h100 = trainer_env(settings, base={}, gpus=("NVIDIA H100 80GB HBM3",) * 8)
    forced = trainer_env(
        Settings(queue_url="q", volume=tmp_path, nccl_disable_p2p=True),
        base={},
        gpus=("NVIDIA H100 80GB HBM3",),
    )
    assert rtx["NCCL_P2P_DISABLE"] == rtx["NCCL_IB_DISABLE"] == "1"
    assert "NCCL_P2P_DISABLE" not in h100 and "NCCL_IB_DISABLE" not in h100
    assert forced["NCCL_P2P_DISABLE"] == "1"
