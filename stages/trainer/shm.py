"""Shared memory that DeepSpeed's CPU backend leaves behind, and its clean-up.

Kept free of heavy imports: the built-in trainer imports it too.
"""

from __future__ import annotations

from pathlib import Path

SHM_DIR = Path("/dev/shm")  # noqa: S108 - where DeepSpeed puts them, not a temp file of ours


def release_shared_memory(master_port: int) -> int:
    """Remove the shared-memory buffers DeepSpeed's CPU backend left for this run.

    Its shm all-reduce allocates ``/dev/shm/deepspeed_*_<addr>_<master port>_*`` (66 MB each)
    and never unlinks them, not even on a clean exit: on a CPU worker every job leaked one
    until memory ran out. The master port is unique per concurrent run on a host, so this
    removes only what the finished run owned. GPU runs (NCCL) leave nothing here.
    """
    removed = 0
    for buffer in SHM_DIR.glob(f"deepspeed_*_{master_port}_*"):
        buffer.unlink(missing_ok=True)
        removed += 1
    return removed
