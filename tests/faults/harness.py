"""Real worker processes for fault-injection tests: start, signal, wait (always bounded)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from contracts.enums import EventType
from contracts.events import CloudEvent
from infra.local_stack import LocalStack
from infra.volume import JobStore

REPO = Path(__file__).resolve().parents[2]


class WorkerProcess:
    def __init__(
        self, stack: LocalStack, volume: Path, name: str, log_dir: Path, **env: str
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        environ = {**os.environ, **stack.env()}
        environ.update(
            LORAQ_VOLUME=str(volume),
            LORAQ_WORKER_ID=name,
            LORAQ_VISIBILITY_TIMEOUT="5",
            LORAQ_WAIT_TIME_SECONDS="1",
            LORAQ_PROGRESS_INTERVAL_S="0",
            LORAQ_SHUTDOWN_GRACE_S="30",
            LORAQ_TRANSIENT_RETRY_WAIT_S="0.05",
            LORAQ_RETRY_BASE_DELAY_S="1",
            PYTHONPATH=str(REPO),
        )
        environ.update(env)  # the test's own settings win over the defaults above
        log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.faults.worker_main"],
                cwd=REPO,
                env=environ,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        self.kill(signal.SIGKILL)
        self.process.wait(timeout=30)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


def wait_until(
    condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.1
) -> None:
    """Poll a condition on real state (files, queues) until true; fail loudly at the bound."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(poll_s)


def journal(volume: Path, job_id: str) -> list[CloudEvent]:
    return JobStore(volume).read_events(job_id)


def journal_has(volume: Path, job_id: str, predicate: Callable[[CloudEvent], bool]) -> bool:
    return any(predicate(e) for e in journal(volume, job_id))


def trainer_pids(marker: str) -> list[int]:
    """Processes whose command line mentions ``marker`` (a job's train.toml path)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline and "pytest" not in cmdline:
            pids.append(int(proc.name))
    return pids


def progress_steps(events: list[CloudEvent]) -> list[int]:
    return [int(e.data["step"]) for e in events if e.type is EventType.JOB_PROGRESS]
