"""safetensors files written and read without the library: headers, and all-zero sparse files.

A frozen text encoder whose shapes a loader hard-codes (Qwen3-4B for Z-Image: 8 GB) is written
as its header followed by a hole: the file reads back as zeros, takes no disk and no time, and
every loader sees a well-formed file of the right size. The CPU tests use the same writer for the
placeholder weights of the layout step.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# safetensors' dtype names and their widths in bytes.
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "I64": 8, "I32": 4, "U8": 1}
_ALIGN = 8  # the format pads its header so that tensor data starts 8-byte aligned


def tensor_bytes(dtype: str, shape: Sequence[int]) -> int:
    return DTYPE_BYTES[dtype] * math.prod(shape)


def header_for(
    tensors: Mapping[str, tuple[str, Sequence[int]]], metadata: Mapping[str, str] | None = None
) -> tuple[bytes, int]:
    """(the encoded header with its length prefix, the number of data bytes after it)."""
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name in sorted(tensors):
        dtype, shape = tensors[name]
        size = tensor_bytes(dtype, shape)
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-(len(encoded) + 8) % _ALIGN)
    return len(encoded).to_bytes(8, "little") + encoded, offset


def write_zeros(
    path: Path,
    tensors: Mapping[str, tuple[str, Sequence[int]]],
    metadata: Mapping[str, str] | None = None,
) -> int:
    """Write a file whose every tensor is zero, as a hole; returns its size in bytes."""
    head, data = header_for(tensors, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        out.write(head)
        out.truncate(len(head) + data)
    return len(head) + data


def read_header(path: Path) -> dict[str, Any]:
    """The tensors' entries (``__metadata__`` left out), from the first few KB of the file."""
    with path.open("rb") as f:
        length = int.from_bytes(f.read(8), "little")
        header: dict[str, Any] = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header


def tensor_count(path: Path) -> int:
    return len(read_header(path))


def is_sparse(path: Path) -> bool:
    """Whether the file holds fewer blocks than its length (a hole where zeros would be)."""
    stat = os.stat(path)
    return stat.st_blocks * 512 < stat.st_size
