"""A blocked event loop is reported while it is blocked, with the stack that blocks it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, time
    from consumer.stall_watch import stall_watch
    from infra.logging import configure_logging

    def a_call_that_blocks_the_loop():
        time.sleep(4)

    async def main(block):
        async with stall_watch(1.0):
            await asyncio.sleep(0.1)
            if block:
                a_call_that_blocks_the_loop()
            else:
                await asyncio.sleep(3)
            await asyncio.sleep(0.6)  # a tick after the stall: the loop reports it

    configure_logging("INFO")
    asyncio.run(main(sys.argv[1] == "block"))
    """
)


def _run(mode: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout + done.stderr


def test_a_blocked_loop_dumps_the_blocking_stack_and_logs_the_stall() -> None:
    """GIVEN a worker loop watched with a 1 s limit WHEN a synchronous call blocks it 4 s
    THEN the stacks are written during the stall, naming that call, and event_loop_stalled is
    logged once the loop runs again."""
    output = _run("block")
    assert "a_call_that_blocks_the_loop" in output
    assert "event_loop_stalled" in output


def test_a_loop_that_only_awaits_reports_nothing() -> None:
    """GIVEN the same watch WHEN the loop waits 3 s by awaiting THEN nothing is reported (the
    loop re-arms every 0.25 s, so only a wake-up late by 0.75 s could trip it)."""
    output = _run("await")
    assert "Thread" not in output and "event_loop_stalled" not in output
