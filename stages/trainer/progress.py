"""Honest progress: percent from the real total step count, ETA from measured step times."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class ProgressTracker:
    total_steps: int | None
    window: int = 20
    epoch: int = 1
    step: int = 0
    _times: deque[float] = field(default_factory=deque)

    def record(self, step: int, iter_time_s: float) -> None:
        self.step = step
        self._times.append(iter_time_s)
        while len(self._times) > self.window:
            self._times.popleft()

    @property
    def slowest_step_s(self) -> float | None:
        """The longest recent step: what a stop request may have to wait for."""
        return max(self._times) if self._times else None

    @property
    def percent(self) -> float | None:
        if not self.total_steps:
            return None
        return round(min(100.0, 100.0 * self.step / self.total_steps), 2)

    @property
    def eta_s(self) -> float | None:
        if not self.total_steps or not self._times:
            return None
        mean = sum(self._times) / len(self._times)
        return round(max(0, self.total_steps - self.step) * mean, 1)
