"""Dataset loading for the tiny trainer: diffusion-pipe's dataset.toml, images + captions.

Files are listed, measured and bucketed exactly as diffusion-pipe does it (``stages/
dataset_scan.py``, ``stages/step_count.py`` ``plan_dataset``): aspect-ratio, resolution and
frame buckets, repeats, captions, and per-bucket batches that drop each bucket's remainder, so
an epoch has the number of steps loraq predicts. The simplification: the tiny model has one
square input size, so every image is centre-cropped to the first resolution whatever bucket
it is in; the buckets decide which images share a batch and how many batches there are.

Images are decoded once into one float tensor (a few KB each at 32×32), which
``stages/tiny_trainer/cache.py`` caches with diffusion-pipe's flags. The epoch order is seeded
by (seed, epoch), so the loader's whole state is (epoch, batches pulled) and a resumed run sees
exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import toml
import torch
from PIL import Image, ImageOps

from stages.dataset_scan import is_video, measure_file, media_paths
from stages.step_count import MediaFile, plan_dataset


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
    # The whole dataset.toml: the bucketing keys ``plan_dataset`` reads.
    settings: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ImageDataset:
    """Decoded images [n, 3, N, N] in [-1, 1], their captions, and the items to train on.

    ``items`` maps each item (repeats included) to its image, bucket after bucket;
    ``bucket_sizes`` says how many consecutive items each bucket holds.
    """

    images: torch.Tensor
    captions: tuple[str, ...]
    items: tuple[int, ...]
    bucket_sizes: tuple[int, ...] = ()
    subsample_ratio: float | None = None

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
    """Read dataset.toml; the bucketing keys are kept whole for ``plan_dataset``."""
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
    return DatasetSpec(_first_resolution(cfg.get("resolutions")), tuple(directories), cfg)


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
    """The same-stem .txt caption, or "" without one (kept only when skip_empty_caption is off,
    as diffusion-pipe does)."""
    caption_file = image_path.with_suffix(".txt")
    return caption_file.read_text().strip() if caption_file.is_file() else ""


def _measure_images(directory: Path) -> list[MediaFile]:
    """The directory's images as diffusion-pipe lists them; videos and unreadable files are
    skipped with a warning (tiny is image-only)."""
    if not directory.is_dir():
        raise FileNotFoundError(f"dataset directory does not exist: {directory}")
    files = media_paths(directory)
    videos = [file for file in files if is_video(file)]
    if videos:
        print(
            f"WARNING: skipping {len(videos)} video file(s) in {directory}: "
            "the tiny model is image-only",
            flush=True,
        )
    measured = []
    for file in files:
        if is_video(file):
            continue
        found = measure_file(file)
        if found is None or not found.measured:
            print(f"WARNING: {file} could not be opened as an image. Skipping.", flush=True)
            continue
        measured.append(found)
    if not measured:
        print(f"WARNING: directory {directory} has no images", flush=True)
    return measured


def load_dataset(spec: DatasetSpec) -> ImageDataset:
    """Decode every bucketed image of every directory and lay the items out bucket by bucket."""
    folders = dict.fromkeys(directory.path for directory in spec.directories)  # each one once
    media = [file for folder in folders for file in _measure_images(folder)]
    buckets = plan_dataset(spec.settings, media, framerate=None)
    used = sorted({index for items in buckets.values() for index in items})
    if not used:
        raise RuntimeError(
            "Processed dataset was empty: no captioned image fits a bucket in any [[directory]]."
        )
    prefixes = {d.path: d.caption_prefix for d in spec.directories}
    image_of = {index: position for position, index in enumerate(used)}
    images, captions = [], []
    for index in used:
        path = media[index].directory / media[index].name
        images.append(load_image(path, spec.resolution))
        captions.append(prefixes.get(media[index].directory, "") + read_caption(path))
    keys = sorted(buckets)
    items = tuple(image_of[index] for key in keys for index in buckets[key])
    ratio = spec.settings.get("subsample_ratio")
    return ImageDataset(
        torch.stack(images),
        tuple(captions),
        items,
        tuple(len(buckets[key]) for key in keys),
        float(ratio) if ratio else None,
    )


def save_image(image: torch.Tensor, path: Path) -> None:
    """Write a [3, N, N] tensor in [-1, 1] as an 8-bit image (for --dump_dataset)."""
    pixels = (
        ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    )
    Image.frombytes("RGB", (pixels.shape[1], pixels.shape[0]), pixels.numpy().tobytes()).save(path)


class EpochLoader:
    """Hands out global batches of dataset item indices, one per optimizer step.

    Like diffusion-pipe's ConcatenatedBatchedDataset, a batch never mixes buckets and each
    bucket drops the remainder that does not fill a batch; ``subsample_ratio`` keeps the first
    part of the epoch's batches. Each epoch shuffles every bucket and the order of the batches,
    seeded by (seed, epoch). An epoch in which every bucket rounds to nothing still gives one
    batch, wrapping around the items (diffusion-pipe refuses such a dataset; the tiny trainer
    keeps two-image demos running). `epoch` advances as soon as the last batch of an epoch is
    handed out, which is when diffusion-pipe's loader advances it too, so the saver sees the
    epoch change right after that epoch's last step.
    """

    def __init__(
        self,
        bucket_sizes: Sequence[int],
        batch_size: int,
        seed: int,
        subsample_ratio: float | None = None,
    ) -> None:
        self.bucket_sizes = tuple(bucket_sizes)
        self.batch_size = batch_size
        self.seed = seed
        self.subsample_ratio = subsample_ratio
        self.epoch = 1
        self.num_batches_pulled = 0
        self._batches: tuple[int, list[list[int]]] | None = None

    @property
    def steps_per_epoch(self) -> int:
        full = sum(size // self.batch_size for size in self.bucket_sizes)
        if self.subsample_ratio:
            full = int(full * self.subsample_ratio)
        return max(1, full)

    def next_batch(self) -> list[int]:
        """Indices of the next global batch; advances the epoch after its last batch."""
        batch = self._epoch_batches(self.epoch)[self.num_batches_pulled]
        self.num_batches_pulled += 1
        if self.num_batches_pulled >= self.steps_per_epoch:
            self.epoch += 1
            self.num_batches_pulled = 0
        return batch

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        if self._batches is not None and self._batches[0] == epoch:
            return self._batches[1]
        batches: list[list[int]] = []
        start = 0
        for bucket, size in enumerate(self.bucket_sizes):
            order = (start + self._permutation(size, epoch, bucket + 1)).tolist()
            full = size // self.batch_size * self.batch_size
            batches.extend(order[i : i + self.batch_size] for i in range(0, full, self.batch_size))
            start += size
        batches = [batches[i] for i in self._permutation(len(batches), epoch, 0).tolist()]
        batches = batches[: self.steps_per_epoch]
        if not batches:  # every bucket rounded to nothing: one batch, wrapping around the items
            order = self._permutation(start, epoch, 0).tolist()
            batches = [[order[i % start] for i in range(self.batch_size)]]
        self._batches = (epoch, batches)
        return batches

    def _permutation(self, n: int, epoch: int, stream: int) -> torch.Tensor:
        seed = (self.seed * 1_000_003 + epoch) * 1_009 + stream
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed))

    def state_dict(self) -> dict[str, int]:
        """Exact position: `num_batches_pulled` counts batches already trained in `epoch`."""
        return {"epoch": self.epoch, "num_batches_pulled": self.num_batches_pulled}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.num_batches_pulled = int(state["num_batches_pulled"])
