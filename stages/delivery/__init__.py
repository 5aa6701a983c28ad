"""Delivery methods: each turns the trained LoRA into a link the user can download.

One module per method, each with ``async def deliver(ctx, bundle) -> OutputInfo``. A method
that cannot deliver raises ``DeliveryError``: ``publish`` either fails the job with it, or (for
``auto``) records the reason and falls through to the next method in the seed's order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Bundle:
    """What there is to deliver: the newest epoch's folder and its LoRA file."""

    job_id: str
    model_dir: Path
    lora_path: Path
    # Every saved epoch folder, oldest first (``model_dir`` is the last one).
    epoch_dirs: tuple[Path, ...]


class DeliveryError(Exception):
    """This method could not deliver; ``retryable`` says whether a later attempt may pass."""

    def __init__(self, message: str, *, retryable: bool, field: str = "output.method") -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.field = field
