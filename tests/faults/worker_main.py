"""A real ``loraq worker`` process with one test-only fault: pause after a stage's body.

``LORAQ_TEST_PAUSE_AFTER=<stage>`` makes the worker stop right after that stage has written its
outputs but before the ledger records it as completed (the riskiest window for a crash), write
``<volume>/paused-<stage>``, and wait there to be killed. Everything else is the production
worker, wired by ``loraq.app.run_worker``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from consumer.job_runner import log_stage
from contracts.enums import StageName
from infra.logging import configure_logging
from infra.settings import Settings
from loraq.app import run_worker


def pause_hook(stage_name: str, volume: Path) -> Callable[..., Awaitable[None]]:
    async def hook(stage: StageName, body: Callable[[], Awaitable[None]]) -> None:
        await log_stage(stage, body)
        if stage.value == stage_name:
            (volume / f"paused-{stage_name}").write_text(str(os.getpid()))
            await asyncio.Event().wait()  # until SIGKILL

    return hook


def main() -> None:
    configure_logging("INFO")
    settings = Settings()  # from LORAQ_* variables, like `loraq worker`
    pause = os.environ.get("LORAQ_TEST_PAUSE_AFTER")
    hook = pause_hook(pause, settings.volume) if pause else None
    asyncio.run(run_worker(settings, stage_hook=hook))


if __name__ == "__main__":
    main()
