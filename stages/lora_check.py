"""Refuse to deliver a LoRA that holds NaN or infinity: it would load and produce garbage.

diffusion-pipe saves whatever the optimizer left. A weight decay large enough to overflow, or a
run that diverged between two printed losses, saves a file that opens without complaint, so
the only way to know is to read every tensor once, one at a time (a LoRA is small; no second
copy of the whole file is held).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open


def nonfinite_tensors(path: Path) -> tuple[list[str], int]:
    """The names of the floating-point tensors holding NaN or infinity, and the tensor count."""
    bad: list[str] = []
    with safe_open(str(path), framework="pt") as lora:
        names = list(lora.keys())
        for name in names:
            tensor = lora.get_tensor(name)
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad.append(name)
    return bad, len(names)
