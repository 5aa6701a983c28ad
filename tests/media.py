"""Tiny real media for tests: videos encoded with PyAV, images drawn with Pillow."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image

# Container → a codec PyAV's bundled FFmpeg encodes (and ships) for it.
VIDEO_CODECS = {
    ".mp4": "libx264",
    ".mov": "libx264",
    ".mkv": "libx264",
    ".avi": "mpeg4",
    ".webm": "libvpx-vp9",
}


def write_video(path: Path, frames: int = 4, size: int = 32) -> Path:
    """A short clip of moving colour, ``frames`` frames of ``size``×``size`` pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(VIDEO_CODECS[path.suffix.lower()], rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for index in range(frames):
            pixels = np.full((size, size, 3), (index * 40) % 256, dtype=np.uint8)
            pixels[:, : index + 1] = (200, 30, 30)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_image(path: Path, size: int = 16, colour: tuple[int, int, int] = (30, 90, 200)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path
