"""Generated datasets for the demo, the tests and the benchmarks (nothing is downloaded)."""

from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw

_COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "cyan"]
_SHAPES = ["circle", "square", "triangle"]


def shape_image(index: int, size: int = 32, seed: int = 0) -> tuple[Image.Image, str]:
    """A coloured shape on a dark background, and a caption that describes it."""
    rng = random.Random(seed * 1000 + index)
    colour, shape = _COLOURS[index % len(_COLOURS)], _SHAPES[index % len(_SHAPES)]
    image = Image.new("RGB", (size, size), (rng.randint(0, 40),) * 3)
    draw = ImageDraw.Draw(image)
    margin = rng.randint(size // 8, size // 4)
    box = (margin, margin, size - margin, size - margin)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon(
            [(size // 2, margin), (size - margin, size - margin), (margin, size - margin)],
            fill=colour,
        )
    return image, f"a {colour} {shape} on a dark background"


def write_image_dataset(folder: Path, count: int = 8, size: int = 32, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(count):
        image, caption = shape_image(index, size, seed)
        path = folder / f"shape_{index:03d}.png"
        image.save(path)
        path.with_suffix(".txt").write_text(caption)
        written.append(path)
    return written


def image_dataset_zip(count: int = 8, size: int = 32, seed: int = 0, folder: str = "") -> bytes:
    """A zip of ``count`` PNGs with same-stem ``.txt`` captions (optionally inside ``folder``)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(count):
            image, caption = shape_image(index, size, seed)
            png = io.BytesIO()
            image.save(png, format="PNG")
            prefix = f"{folder.strip('/')}/" if folder else ""
            archive.writestr(f"{prefix}shape_{index:03d}.png", png.getvalue())
            archive.writestr(f"{prefix}shape_{index:03d}.txt", caption)
    return buffer.getvalue()
