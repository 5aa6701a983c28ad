"""Starting a trainer must not run the worker's at-fork hooks in the child.

The worker is multi-threaded (Hub uploads, UPDATES/ commits and zips run in threads) and
libraries register ``os.register_at_fork`` hooks that take their own locks: huggingface_hub's
closes its shared httpx client, whose pool lock another thread may hold at the moment of the
fork. Python runs those hooks in the child only when ``Popen`` gets a ``preexec_fn``; a hook
that blocks there never lets the child reach ``exec``, and ``Popen`` (called on the event
loop) waits for it forever: every slot, every heartbeat of the worker freezes. That is what
stopped a CI run for ten minutes, so the launch must not pass a ``preexec_fn``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from stages.trainer.launcher import Launch, TrainerProcess, free_port

_ARMED: list[bool] = []
_HOOK_RAN_EXIT = 97


def _fail_if_armed() -> None:
    # Stands in for a hook that would block on a lock held by a thread the child lacks: exiting
    # instead keeps the failure visible without hanging the test run.
    if _ARMED:
        os._exit(_HOOK_RAN_EXIT)


os.register_at_fork(after_in_child=_fail_if_armed)


async def test_a_trainer_starts_without_running_the_workers_fork_hooks(tmp_path: Path) -> None:
    """GIVEN an at-fork hook in the worker that must never run in a trainer's child
    WHEN a trainer is started through its guard
    THEN the hook does not run: the command executes and its output comes back."""
    launch = Launch(
        argv=[sys.executable, "-c", "print('trainer ran')"],
        cwd=tmp_path,
        env=dict(os.environ),
        master_port=free_port(),
    )
    _ARMED.append(True)
    try:
        process = await TrainerProcess.start(launch)
    finally:
        _ARMED.clear()
    lines = [line async for line in process.lines()]
    code = await process.wait()
    process.finish()
    assert code != _HOOK_RAN_EXIT, "the child ran the worker's at-fork hooks"
    assert (code, lines) == (0, ["trainer ran"])
