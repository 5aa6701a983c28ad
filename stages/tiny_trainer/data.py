"""Dataset loading for the tiny trainer: diffusion-pipe's dataset.toml, images + captions.

Images are decoded once into one float tensor (a few KB each at 32×32), so there is no cache to
build and `--cache_only` is only a validation pass. The epoch order is a permutation seeded by
(seed, epoch), so the loader's whole state is (epoch, batches pulled) and a resumed run sees
exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import toml
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp"})
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".webm", ".mov", ".avi", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".gif"}
)
# Files diffusion-pipe never treats as media.
_NON_MEDIA_SUFFIXES = frozenset({".txt", ".npz", ".json", ".parquet", ".bak", ".db"})


@dataclass(frozen=True)
class DirectorySpec:
    """One `[[directory]]` table."""

    path: Path
    num_repeats: int
    caption_prefix: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    """The parts of dataset.toml the tiny model uses."""

    resolution: int
    directories: tuple[DirectorySpec, ...]


@dataclass(frozen=True)
class ImageDataset:
    """Decoded images [n, 3, N, N] in [-1, 1], their captions, and the repeat-expanded index."""

    images: torch.Tensor
    captions: tuple[str, ...]
    items: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.items)


def _first_resolution(resolutions: Any) -> int:
    """`resolutions = [N]` (or `[[N, N]]`): the tiny model trains square images at the first one."""
    if not isinstance(resolutions, list) or not resolutions:
        raise ValueError(
            "dataset.toml needs a non-empty `resolutions` list, e.g. resolutions = [32]"
        )
    first = resolutions[0]
    if isinstance(first, list):
        if len(first) != 2 or first[0] != first[1]:
            raise ValueError(f"the tiny model trains square images; got resolution {first}")
        first = first[0]
    return int(first)


def parse_dataset_config(path: str | Path) -> DatasetSpec:
    """Read dataset.toml; bucketing keys (enable_ar_bucket, frame_buckets, ...) are ignored."""
    with open(path) as f:
        cfg = toml.load(f)
    directories = []
    for table in cfg.get("directory", []):
        repeats = int(table.get("num_repeats", cfg.get("num_repeats", 1)))
        if repeats <= 0:
            raise ValueError(f"num_repeats must be >0, was {repeats}")
        prefix = str(table.get("caption_prefix", cfg.get("caption_prefix", "")))
        directories.append(DirectorySpec(Path(table["path"]), repeats, prefix))
    if not directories:
        raise ValueError(f"{path} has no [[directory]] table")
    return DatasetSpec(_first_resolution(cfg.get("resolutions")), tuple(directories))


def load_image(path: Path, resolution: int) -> torch.Tensor:
    """RGB, centre-cropped square, resized to N×N, scaled to [-1, 1] -> [3, N, N]."""
    with Image.open(path) as raw:
        img = ImageOps.exif_transpose(raw).convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side))
    img = img.resize((resolution, resolution), Image.Resampling.BICUBIC)
    pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return pixels.view(resolution, resolution, 3).permute(2, 0, 1).float() / 127.5 - 1.0


def read_caption(image_path: Path) -> str:
    """The same-stem .txt caption, or "" when there is none (diffusion-pipe's behaviour)."""
    caption_file = image_path.with_suffix(".txt")
    return caption_file.read_text().strip() if caption_file.is_file() else ""


def _media_files(directory: Path) -> tuple[list[Path], list[Path]]:
    """Sorted (images, videos) in `directory`; other files are not media."""
    if not directory.is_dir():
        raise FileNotFoundError(f"dataset directory does not exist: {directory}")
    images, videos = [], []
    for file in sorted(directory.iterdir()):
        suffix = file.suffix.lower()
        if not file.is_file() or suffix in _NON_MEDIA_SUFFIXES:
            continue
        if suffix in IMAGE_EXTENSIONS:
            images.append(file)
        elif suffix in VIDEO_EXTENSIONS:
            videos.append(file)
    return images, videos


def load_dataset(spec: DatasetSpec) -> ImageDataset:
    """Decode every image of every directory; skip videos with a warning (tiny is image-only)."""
    images: list[torch.Tensor] = []
    captions: list[str] = []
    items: list[int] = []
    for directory in spec.directories:
        files, videos = _media_files(directory.path)
        if videos:
            print(
                f"WARNING: skipping {len(videos)} video file(s) in {directory.path}: "
                "the tiny model is image-only",
                flush=True,
            )
        if not files:
            print(f"WARNING: directory {directory.path} has no images", flush=True)
        first = len(images)
        for file in files:
            images.append(load_image(file, spec.resolution))
            captions.append(directory.caption_prefix + read_caption(file))
        items.extend(list(range(first, len(images))) * directory.num_repeats)
    if not images:
        raise RuntimeError("Processed dataset was empty: no images in any [[directory]].")
    return ImageDataset(torch.stack(images), tuple(captions), tuple(items))


def save_image(image: torch.Tensor, path: Path) -> None:
    """Write a [3, N, N] tensor in [-1, 1] as an 8-bit image (for --dump_dataset)."""
    pixels = (
        ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    )
    Image.frombytes("RGB", (pixels.shape[1], pixels.shape[0]), pixels.numpy().tobytes()).save(path)


class EpochLoader:
    """Hands out global batches of dataset item indices, one per optimizer step.

    Each epoch visits the items in a permutation seeded by (seed, epoch) and drops the remainder
    that does not fill a batch, like diffusion-pipe. A dataset smaller than one batch still gives
    one step per epoch, wrapping around the permutation. `epoch` advances as soon as the last
    batch of an epoch is handed out, which is when diffusion-pipe's loader advances it too, so
    the saver sees the epoch change right after that epoch's last step.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int) -> None:
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 1
        self.num_batches_pulled = 0

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.num_items // self.batch_size)

    def next_batch(self) -> list[int]:
        """Indices of the next global batch; advances the epoch after its last batch."""
        order = self._order(self.epoch)
        start = self.num_batches_pulled * self.batch_size
        batch = [int(order[(start + i) % self.num_items]) for i in range(self.batch_size)]
        self.num_batches_pulled += 1
        if self.num_batches_pulled >= self.steps_per_epoch:
            self.epoch += 1
            self.num_batches_pulled = 0
        return batch

    def _order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_items, generator=generator)

    def state_dict(self) -> dict[str, int]:
        """Exact position: `num_batches_pulled` counts batches already trained in `epoch`."""
        return {"epoch": self.epoch, "num_batches_pulled": self.num_batches_pulled}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.num_batches_pulled = int(state["num_batches_pulled"])
