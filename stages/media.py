"""Media checks for uploaded datasets: is this file something the trainer can actually read?

An archive may carry files whose name promises an image or a video but whose bytes do not
(truncated uploads, HTML error pages saved as ``.jpg``, unsupported codecs). The trainer would
crash on them hours later, or Gemini would bill a call to fail; they are cheaper to find here.
Images must pass Pillow's ``verify``; videos must open with PyAV (FFmpeg) and decode a frame
(MKV and WebM report no frame count in their headers, so decoding one is the real test).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm"})


def problem_with(path: Path) -> str | None:
    """Why ``path`` is unusable, or None when it opens as the media its suffix claims."""
    suffix = path.suffix.lower()
    try:
        if suffix in IMAGE_SUFFIXES:
            _check_image(path)
        elif suffix in VIDEO_SUFFIXES:
            return _check_video(path)
    except Exception as exc:  # each decoder has its own error types; any of them means unusable
        return f"{type(exc).__name__}: {exc}"
    return None


def _check_image(path: Path) -> None:
    with Image.open(path) as image:
        image.verify()


def _check_video(path: Path) -> str | None:
    import av  # FFmpeg's libraries: loaded only for datasets with videos

    with av.open(str(path)) as container:
        if not container.streams.video:
            return "no video stream"
        for _ in container.decode(video=0):
            return None
    return "no decodable frames"
