"""What starting the trainer costs the event loop, with and without a ``preexec_fn``.

``asyncio.create_subprocess_exec`` runs ``Popen`` on the loop, so a slow spawn is a stalled
worker. With a ``preexec_fn`` CPython must ``fork()`` (copying the page tables of the whole
worker, torch and any loaded captioner included) and run every at-fork hook in the child; without
one it can ``vfork()``. The launcher dropped its ``preexec_fn`` for a deadlock (see
``TrainerProcess.start``); this measures what that did to spawn time, in this process, with
``--rss-mib`` of touched memory standing in for loaded models.

    .venv/bin/python bench/trainer_spawn.py [--spawns 200] [--rss-mib 2048]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: F401 - a worker's process has it loaded: part of what fork copies

from bench.results_file import write_result


def _noop() -> None:
    pass


async def _spawn_s(with_preexec: bool) -> float:
    start = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        "/bin/true", start_new_session=True, preexec_fn=_noop if with_preexec else None
    )
    spawned = time.perf_counter() - start  # what the loop was blocked for
    await process.wait()
    return spawned


async def _measure(spawns: int) -> dict[str, float]:
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(spawns):
        for with_preexec in (i % 2 == 0, i % 2 == 1):  # alternate which goes first
            times[with_preexec].append(await _spawn_s(with_preexec))
    with_fn, without = statistics.median(times[True]), statistics.median(times[False])
    return {
        "median_ms_with_preexec_fn": round(with_fn * 1000, 3),
        "median_ms_without": round(without * 1000, 3),
        "ratio_without_to_with": round(without / with_fn, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spawns", type=int, default=200)
    parser.add_argument("--rss-mib", type=int, default=2048)
    args = parser.parse_args()
    ballast = bytearray(args.rss_mib << 20)
    ballast[::4096] = b"\1" * len(range(0, len(ballast), 4096))  # touch every page
    summary = {"spawns": args.spawns, "rss_mib": args.rss_mib, **asyncio.run(_measure(args.spawns))}
    write_result("trainer_spawn", summary)


if __name__ == "__main__":
    main()
