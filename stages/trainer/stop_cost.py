"""How long a polite stop would take: the step in flight, then one checkpoint.

diffusion-pipe reads ``save_quit`` only in ``Saver.process_step``, after a whole step (every
accumulation micro-batch; ``utils/saver.py`` line 146, called at train.py line 960 at
8f83dbf), then writes a DeepSpeed checkpoint and exits. A Wan 14B step can take minutes, so
a fixed shutdown budget may run out mid-step: the trainer is SIGKILLed and the steps since the
last checkpoint are lost anyway, after the grace was spent waiting. The clock measures both
parts from the trainer's own output (step lines carry ``iter time``; DeepSpeed announces each
checkpoint), so the stage can tell early that the grace is too short and, at a stop, hand the
job back at once instead of waiting for a save that cannot finish.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class StopClock:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._slowest_step_s: float | None = None
        self._last_step_at: float | None = None
        self._checkpoint_started_at: float | None = None
        self.checkpoint_s: float | None = None

    def step_done(self, iter_time_s: float, slowest_step_s: float | None) -> None:
        now = self._clock()
        if self._checkpoint_started_at is not None:
            # The line after a checkpoint arrives one step later: subtract that step.
            self.checkpoint_s = max(0.0, now - self._checkpoint_started_at - iter_time_s)
            self._checkpoint_started_at = None
        self._slowest_step_s = slowest_step_s
        self._last_step_at = now

    def checkpoint_started(self) -> None:
        self._checkpoint_started_at = self._clock()

    def stop_now_s(self) -> float | None:
        """Seconds a save_quit asked for now would take; None before the first step."""
        if self._slowest_step_s is None or self._last_step_at is None:
            return None
        in_flight = max(0.0, self._slowest_step_s - (self._clock() - self._last_step_at))
        return in_flight + (self.checkpoint_s or 0.0)

    def worst_stop_s(self) -> float | None:
        """A stop that arrives just after a step started: a whole step, then the checkpoint."""
        if self._slowest_step_s is None:
            return None
        return self._slowest_step_s + (self.checkpoint_s or 0.0)
