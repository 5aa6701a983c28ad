"""Work lost and time to resume after SIGKILL mid-training, on real worker processes.

For each round: a worker trains a job that checkpoints every epoch (8 steps); it is killed at a
different point of an epoch; a fresh worker resumes. We report
  - steps redone ÷ checkpoint interval (1.0 would be a whole interval lost),
  - time to resume (kill → first new training step), split into waiting for SQS to redeliver
    (the visibility timeout) and loraq + trainer start-up,
  - both as ratios to the bare trainer's own start-up (process start → first step) in this run.

    .venv/bin/python bench/resume.py [--rounds 3] [--visibility 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results_file import write_result
from contracts.enums import EventType
from contracts.request import JobRequest
from infra.local_stack import start_local_stack
from infra.settings import Settings
from infra.volume import JobPaths
from loraq.demo import demo_request, upload_dataset
from loraq.sample_data import write_image_dataset
from stages.configure import TRAIN_TOML, build_configs, write_configs
from stages.registry import spec_for
from stages.trainer.launcher import build_launch
from tests.conftest import send_job, wait_for_terminal
from tests.faults.harness import WorkerProcess, journal, progress_steps, wait_until

INTERVAL = 8


def trainer_startup(request: JobRequest, root: Path) -> float:
    """Seconds from launching the bare trainer to its first step line."""
    paths = JobPaths(root)
    write_image_dataset(paths.dataset / "images", count=8)
    write_configs(build_configs(request.input, paths, root, {"images": 8}), paths.config)
    launch = build_launch(
        Settings(queue_url="unused", volume=root),
        spec_for(request.input.model_type),
        paths.config / TRAIN_TOML,
    )
    started = time.monotonic()
    with subprocess.Popen(
        launch.argv,
        cwd=launch.cwd,
        env=launch.env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("steps:"):
                elapsed = time.monotonic() - started
                process.kill()
                return elapsed
    raise RuntimeError("the trainer printed no step")


def one_round(stack, url: str, volume: Path, kill_at: int, visibility: int) -> dict:  # type: ignore[no-untyped-def]
    job_id = f"resume-{kill_at}"
    send_job(
        stack,
        demo_request(
            url, stack, job_id=job_id, epochs=6, save_every_n_epochs=6, checkpoint_every_n_epochs=1
        ),
    )
    env = {"LORAQ_VISIBILITY_TIMEOUT": str(visibility)}
    first = WorkerProcess(stack, volume, f"a-{kill_at}", volume, **env)
    wait_until(
        lambda: max(progress_steps(journal(volume, job_id)), default=0) >= kill_at,
        300,
        "the kill point",
    )
    first.kill(signal.SIGKILL)
    killed = time.time()
    first.wait(10)
    before = journal(volume, job_id)
    last = max(progress_steps(before))
    checkpoint = max(
        (int(e.data["step"]) for e in before if e.type is EventType.JOB_CHECKPOINTED), default=0
    )
    second = WorkerProcess(stack, volume, f"b-{kill_at}", volume, **env)
    try:
        wait_for_terminal(stack, {job_id}, 600)
    finally:
        second.stop()
    after = journal(volume, job_id)[len(before) :]
    accepted = next(e for e in after if e.type is EventType.JOB_ACCEPTED).time.timestamp()
    first_step = next(e for e in after if e.type is EventType.JOB_PROGRESS).time.timestamp()
    return {
        "kill_at_step": last,
        "checkpoint_step": checkpoint,
        "redone_over_interval": (last - checkpoint) / INTERVAL,
        "kill_to_first_step_s": first_step - killed,
        "redelivery_wait_s": accepted - killed,
        "accept_to_first_step_s": first_step - accepted,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--visibility", type=int, default=5)
    args = parser.parse_args()
    stack = start_local_stack()
    os.environ.update(stack.env())
    try:
        url = upload_dataset(stack)
        with tempfile.TemporaryDirectory() as tmp:
            request = JobRequest.model_validate(demo_request(url, stack, job_id="x", epochs=6))
            startup = statistics.median(
                trainer_startup(request, Path(tmp) / f"bare{i}") for i in range(2)
            )
            points = [INTERVAL + 2 + (i * 3) % (INTERVAL - 1) for i in range(args.rounds)]
            rounds = [one_round(stack, url, Path(tmp) / "vol", p, args.visibility) for p in points]
    finally:
        stack.stop()
    summary = {
        "visibility_timeout_s": args.visibility,
        "trainer_startup_s": round(startup, 2),
        "median_redone_over_interval": statistics.median(r["redone_over_interval"] for r in rounds),
        "max_redone_over_interval": max(r["redone_over_interval"] for r in rounds),
        "median_kill_to_first_step_over_startup": round(
            statistics.median(r["kill_to_first_step_s"] for r in rounds) / startup, 2
        ),
        "median_accept_to_first_step_over_startup": round(
            statistics.median(r["accept_to_first_step_s"] for r in rounds) / startup, 2
        ),
        "rounds": rounds,
    }
    write_result("resume", summary)


if __name__ == "__main__":
    main()
