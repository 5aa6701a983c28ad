"""What the host's GPUs are, asked of the driver without initialising CUDA in the worker.

The worker never touches CUDA itself (the trainer owns the GPU); ``nvidia-smi`` answers from
the driver. No driver (a CPU host, the tests) means no names.
"""

from __future__ import annotations

import functools
import shutil
import subprocess


@functools.cache
def gpu_names() -> tuple[str, ...]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        done = subprocess.run(
            [smi, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.strip() for line in done.stdout.splitlines() if line.strip())


def needs_nccl_p2p_disabled(names: tuple[str, ...]) -> bool:
    """diffusion-pipe's README: "RTX 4000 series needs those 2 environment variables set"."""
    return any("RTX 40" in name for name in names)
