"""A trainer's guardian: whatever happens to the worker, no rank of its trainer outlives it.

The worker starts ``python -m stages.trainer.guard --parent PID -- deepspeed ...`` as the
leader of a new process group. Linux sends the guard SIGTERM when the worker dies, even by
SIGKILL (``PR_SET_PDEATHSIG``, which the guard sets on itself first thing, then checks that
its parent is still the worker: the worker cannot set it from a ``preexec_fn``, see
``TrainerProcess.start``); the guard then signals its whole group, where DeepSpeed's
launcher and every rank live. DeepSpeed's top-level ``deepspeed`` runner does not forward
SIGTERM to its ranks on a single node, so signalling it alone is not enough; and without this,
a killed worker's trainer would keep writing into the job directory while another worker
resumes the same job.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import subprocess
import sys
from types import FrameType

from stages.trainer.shm import release_shared_memory

KILL_AFTER_S = 20


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    if sys.platform != "linux":
        return
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, sig)


def _stop_group(signum: int, _frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, _kill_group)
    os.killpg(0, signal.SIGTERM)
    signal.alarm(KILL_AFTER_S)


def _kill_group(_signum: int, _frame: FrameType | None) -> None:
    os.killpg(0, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.trainer.guard")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    die_with_parent()
    if os.getppid() != args.parent:
        return 1  # the worker died before we could watch it
    signal.signal(signal.SIGTERM, _stop_group)
    signal.signal(signal.SIGINT, _stop_group)
    child = subprocess.Popen(command)  # inherits our stdout and our process group
    code = child.wait()
    # Also when the worker died and nobody else is left to clean up after the run.
    if port := _master_port(command):
        release_shared_memory(port)
    return code


def _master_port(command: list[str]) -> int | None:
    for flag, value in itertools.pairwise(command):
        if flag == "--master_port" and value.isdigit():
            return int(value)
    return None


if __name__ == "__main__":
    sys.exit(main())
