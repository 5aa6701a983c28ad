"""Run a ``loraq`` command in a pseudo-terminal and read what a user would see.

The child's stdin, stdout and stderr are the pty's slave side, so it believes it talks to a
terminal (rich draws its live display); a thread reads the master side into a buffer that tests
wait on (``wait_for``) instead of sleeping.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# CSI sequences (cursor moves, colours, line clears) and OSC sequences (titles, links).
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[=>]")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text).replace("\r", "\n")


def loraq_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "loraq.cli", *args]


class PtyProcess:
    def __init__(
        self, argv: list[str], env: dict[str, str], *, columns: int = 160, rows: int = 40
    ) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        child_env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
        child_env["TERM"] = "xterm-256color"
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=child_env,
            cwd=REPO,
            start_new_session=True,
        )
        os.close(slave)
        self._master = master
        self._raw = bytearray()
        self._closed = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 4096)
            except OSError:  # EIO: every slave fd closed (the child exited)
                chunk = b""
            with self._changed:
                if not chunk:
                    self._closed = True
                    self._changed.notify_all()
                    return
                self._raw += chunk
                self._changed.notify_all()

    @property
    def raw(self) -> str:
        with self._changed:
            return self._raw.decode(errors="replace")

    @property
    def text(self) -> str:
        """The output without escape sequences: every frame rich drew, one after the other."""
        return strip_ansi(self.raw)

    def wait_for(self, needle: str, timeout: float = 30) -> None:
        with self._changed:
            found = self._changed.wait_for(
                lambda: needle in strip_ansi(self._raw.decode(errors="replace")) or self._closed,
                timeout,
            )
        if not found or needle not in self.text:
            raise AssertionError(f"{needle!r} never appeared; output so far:\n{self.text}")

    def wait(self, timeout: float = 60) -> int:
        """The exit status, once the child exited and its last output was read."""
        code = self.proc.wait(timeout)
        deadline = time.monotonic() + 10
        with self._changed:
            self._changed.wait_for(lambda: self._closed, max(0.0, deadline - time.monotonic()))
        return code

    def interrupt(self, signum: int = signal.SIGINT) -> None:
        self.proc.send_signal(signum)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(10)
        os.close(self._master)
