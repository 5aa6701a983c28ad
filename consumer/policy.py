"""One place that decides retries: when to try again and when to give up.

Stages retry transient faults themselves (tenacity, seconds). What still fails comes back
through SQS: the message is made visible again after a growing delay. Failed attempts are
counted in the ledger; at ``max_receives`` of them (or when SQS's own receive count says the
next receive would dead-letter the message) the job fails for good, and the redrive policy
moves the message to the dead-letter queue.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_RECEIVES = 5
_BASE_DELAY_S = 30
_MAX_DELAY_S = 900


@dataclass(frozen=True)
class RetryPolicy:
    max_receives: int = DEFAULT_MAX_RECEIVES
    has_dead_letter_queue: bool = True
    base_delay_s: int = _BASE_DELAY_S

    def is_final(self, receive_count: int) -> bool:
        return receive_count >= self.max_receives

    def delay_s(self, receive_count: int) -> int:
        return int(min(_MAX_DELAY_S, self.base_delay_s * 2 ** max(0, receive_count - 1)))
