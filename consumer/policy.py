"""One place that decides retries: when to try again and when to give up.

Stages retry transient faults themselves (tenacity, seconds). What still fails comes back
through SQS: the message is made visible again after a growing delay. Failed attempts are
counted in the ledger; at ``max_receives`` of them (or when SQS's own receive count says the
next receive would dead-letter the message) the job fails for good, and the redrive policy
moves the message to the dead-letter queue.

A run whose worker dies (SIGKILL, the OOM killer, a lost machine) records no failure, so it is
counted apart, as a lost run. A job that has taken ``max_lost_runs`` workers down fails with
``worker_lost`` when it is received again, instead of crashing worker after worker until SQS
dead-letters it without a word to its subscribers. The limit stays below ``max_receives`` so
that this happens before the dead-letter queue when every delivery was such a crash.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_RECEIVES = 5
DEFAULT_MAX_LOST_RUNS = 3
_BASE_DELAY_S = 30
_MAX_DELAY_S = 900


@dataclass(frozen=True)
class RetryPolicy:
    max_receives: int = DEFAULT_MAX_RECEIVES
    has_dead_letter_queue: bool = True
    base_delay_s: int = _BASE_DELAY_S
    max_lost_runs: int = DEFAULT_MAX_LOST_RUNS

    def __post_init__(self) -> None:
        # One receive must remain after the last lost run, to publish the failure.
        limit = max(1, min(self.max_lost_runs, self.max_receives - 1))
        object.__setattr__(self, "max_lost_runs", limit)

    def has_lost_too_many_runs(self, lost_runs: int) -> bool:
        return lost_runs >= self.max_lost_runs

    def is_final(self, receive_count: int) -> bool:
        return receive_count >= self.max_receives

    def delay_s(self, receive_count: int) -> int:
        return int(min(_MAX_DELAY_S, self.base_delay_s * 2 ** max(0, receive_count - 1)))
