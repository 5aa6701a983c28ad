"""Orchestration overhead: a job through the queue vs the bare trainer on the same config.

Both runs happen in this process's run, on this machine, back to back (alternating order over
``--rounds``), so the ratio compares like with like. The bare run is the exact command the
train stage launches, on a job directory prepared the same way (same dataset, same TOML).

    .venv/bin/python bench/overhead.py [--epochs 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.results_file import write_result
from contracts.request import JobRequest
from infra.local_stack import LocalStack, start_local_stack
from infra.settings import Settings
from infra.volume import JobPaths
from loraq.app import run_worker
from loraq.demo import demo_request, upload_dataset
from loraq.sample_data import write_image_dataset
from stages.configure import TRAIN_TOML, build_configs, write_configs
from stages.registry import spec_for
from stages.trainer.launcher import build_launch
from tests.conftest import send_job, wait_for_terminal


def bare_trainer(request: JobRequest, root: Path, settings: Settings) -> float:
    paths = JobPaths(root)
    write_image_dataset(paths.dataset / "images", count=8)
    configs = build_configs(request.input, paths, root / "models", {"images": 8})
    write_configs(configs, paths.config)
    launch = build_launch(settings, spec_for(request.input.model_type), paths.config / TRAIN_TOML)
    started = time.perf_counter()
    subprocess.run(
        launch.argv,
        cwd=launch.cwd,
        env=launch.env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


async def through_queue(stack: LocalStack, body: dict, volume: Path) -> float:
    settings = stack.worker_settings(volume, progress_interval_s=5)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop=stop))
    started = time.perf_counter()
    send_job(stack, body)
    await asyncio.to_thread(wait_for_terminal, stack, {body["input"]["job_id"]}, 1800)
    elapsed = time.perf_counter() - started
    stop.set()
    await worker
    return elapsed


def _queued(stack: LocalStack, body: dict, volume: Path) -> float:
    return asyncio.run(through_queue(stack, body, volume))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    stack = start_local_stack()
    os.environ.update(stack.env())
    url = upload_dataset(stack)
    queue_times, bare_times = [], []
    try:
        for round_ in range(args.rounds):
            body = demo_request(
                url,
                stack,
                job_id=f"bench-{round_}",
                epochs=args.epochs,
                save_every_n_epochs=args.epochs,
            )
            request = JobRequest.model_validate(body)
            with tempfile.TemporaryDirectory() as tmp:
                root, settings = Path(tmp), Settings(queue_url="unused", volume=Path(tmp))
                runs = [
                    partial(bare_trainer, request, root / "bare", settings),
                    partial(_queued, stack, body, root / "vol"),
                ]
                if round_ % 2:
                    runs.reverse()
                results = [run() for run in runs]
                bare, queued = results if round_ % 2 == 0 else results[::-1]
            bare_times.append(bare)
            queue_times.append(queued)
            print(
                f"round {round_}: queue {queued:.2f}s  bare {bare:.2f}s  ratio {queued / bare:.3f}"
            )
    finally:
        stack.stop()
    ratio = statistics.median(q / b for q, b in zip(queue_times, bare_times, strict=True))
    summary = {
        "epochs": args.epochs,
        "steps": 8 * args.epochs,
        "queue_s": queue_times,
        "bare_s": bare_times,
        "median_ratio": round(ratio, 3),
    }
    write_result("overhead", summary)


if __name__ == "__main__":
    main()
