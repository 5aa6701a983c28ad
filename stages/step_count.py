"""Honest total step counts: how many optimizer steps the trainer will really take.

The progress bar's ``percent`` and ``eta_s`` divide by this number, so it must follow the
trainer's own arithmetic, not ``items ÷ batch``. How one epoch's steps arise in diffusion-pipe
(tdrussell/diffusion-pipe at 8f83dbf, the commit the Dockerfile pins):

1. Files (``utils/dataset.py``, ``DirectoryDataset._get_ungrouped_metadata``): every regular
   file of each ``[[directory]]``'s ``path`` (``glob('*')``, not recursive) except ``.txt .npz
   .json .parquet .bak .db``. ``_metadata_map_fn`` reads each one's size: a suffix in
   ``VIDEO_EXTENSIONS`` (``utils/common.py``: imageio's video list, each also in upper case)
   opens as a video through ComfyUI's ``VideoFromFile`` (width, height, frame count, fps) and
   its frame count is resampled to the model's framerate, ``int(frames × framerate / fps)``
   (Wan: 16; a model without a framerate skips every video); anything else is
   ``PIL.Image.open(...).size`` with 1 frame. A file that does not open is skipped. A file
   without a same-stem ``.txt`` caption is skipped when ``skip_empty_caption`` (default true);
   ``cache_shuffle_num = n > 0`` makes n caption variants of each file, each an item.
2. Buckets (``_find_closest_ar_bucket``): the aspect-ratio bucket nearest in log space among
   ``ars`` (``np.geomspace(min_ar, max_ar, num_ar_buckets)``, or ``ar_buckets``, or ``[1.0]``
   without ``enable_ar_bucket``; rounded to 3 decimals, deduplicated, sorted), and the largest
   frame bucket ≤ the frame count (bucket 1 is always added). A video (more than 1 frame) that
   only fits bucket 1 is dropped: "too short". ``size_buckets`` replaces all of this with
   ``_find_closest_size_bucket``.
3. Resolutions (``ARBucketDataset.cache_latents``): each (ar, frames) bucket becomes one size
   bucket per entry of ``resolutions`` (deduplicated, sorted; ``[w, h]`` means √(w·h)), with
   ``w = √(res²·ar)``, ``h = res²/w``, both rounded to the nearest multiple of the model's
   ``pixels_round_to_multiple`` (16 for every loraq model: ``models/base.py``
   ``CommonPipeline``). Every item is in every resolution's bucket.
4. Repeats (``SizeBucketDataset.__len__``): ``int(entries × num_repeats)`` per directory and
   size bucket.
5. Batches (``Dataset.post_init``, ``ConcatenatedBatchedDataset.post_init``): size buckets with
   the same key, from any directory, are concatenated; the global batch is
   ``micro_batch_size_per_gpu`` (``image_micro_batch_size_per_gpu`` for 1-frame buckets; a
   ``[[size, n], ...]`` list picks the size nearest √(w·h)) × ``gradient_accumulation_steps``
   × the data-parallel world size (``train.py``: DeepSpeed's grid, ``num_gpus ÷
   pipeline_stages``). ``_make_divisible_by`` drops each bucket's remainder, so a bucket
   gives ⌊items ÷ global batch⌋ batches. The dataset's length is their sum, cut to
   ``int(length × subsample_ratio)`` when that is set.
6. Steps (``train.py``): ``steps_per_epoch = len(train_dataloader) // gradient_accumulation_steps``
   where ``PipelineDataLoader.__len__`` is ``len(dataset) × gradient_accumulation_steps``: one
   optimizer step per global batch. A length of 0 raises "Processed dataset was empty".
7. The run (``train.py`` main loop, ``utils/saver.py`` ``process_epoch``): it ends when epoch
   ``epochs + 1`` would start, or after the step where ``step >= max_steps``:
   ``min(epochs × steps_per_epoch, max(1, max_steps))``.

``video_clip_mode`` never changes the count at this commit: ``models/base.py``
``PreprocessMediaFile.extract_clips`` implements ``single_beginning`` and ``single_middle`` and
asserts at most one clip per video ("dataset limitation"); ``multiple`` raises
``NotImplementedError`` while caching. Every video is one clip.

The built-in ``tiny`` trainer buckets with ``plan_dataset`` itself (``stages/tiny_trainer``),
so it lands on the same count, with two differences that ``Trainer.TINY`` encodes: one
process and one micro-batch size, and an epoch whose buckets all round to zero still trains
one batch (wrapping the items) where diffusion-pipe would refuse the dataset.

When a file's size cannot be read from its header (or no files were measured at all), the
estimate falls back to ``max(1, ⌊Σ files × repeats ÷ global batch⌋)`` per epoch.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

# diffusion-pipe's utils/dataset.py ROUND_DECIMAL_DIGITS: ARs and resolutions are rounded to it.
_ROUND_DECIMALS = 3
# models/base.py CommonPipeline.pixels_round_to_multiple; no loraq model overrides it.
PIXELS_ROUND_TO_MULTIPLE = 16

BucketKey = tuple[float, ...]


class Trainer(StrEnum):
    """Whose batching rules the count follows."""

    DIFFUSION_PIPE = "diffusion-pipe"
    TINY = "tiny"


@dataclass(frozen=True)
class MediaFile:
    """What diffusion-pipe's metadata pass learns about one file of a ``[[directory]]``.

    ``width``/``height`` are None when the header could not be read (the count then falls back
    to the simple formula). ``frames``/``fps`` are the source video's; an image has 1 frame.
    """

    directory: Path
    name: str
    width: int | None
    height: int | None
    video: bool = False
    frames: int = 1
    fps: float | None = None
    captioned: bool = True

    @property
    def measured(self) -> bool:
        sized = self.width is not None and self.height is not None
        return sized and (not self.video or bool(self.fps))

    def frames_at(self, framerate: float | None) -> int | None:
        """Frames after resampling to the model's framerate; None: the model takes no video."""
        if not self.video:
            return 1
        if framerate is None or not self.fps:
            return None
        return int(self.frames * framerate / self.fps)


def unmeasured(directory: Path, count: int) -> list[MediaFile]:
    """``count`` files known only by number (``loraq config``, a dataset not yet downloaded)."""
    return [MediaFile(directory, f"#{i}", None, None) for i in range(count)]


@dataclass(frozen=True)
class _Directory:
    """One ``[[directory]]`` with diffusion-pipe's defaults and per-directory overrides applied."""

    path: Path
    num_repeats: float
    captions_per_item: int
    skip_empty_caption: bool
    ars: Any  # np.ndarray of the rounded, sorted aspect ratios
    frame_buckets: Any  # np.ndarray, sorted, always holding 1
    resolutions: tuple[float, ...]
    size_buckets: Any  # np.ndarray of [w, h, frames] sorted by frames (descending), or None

    def keys_for(self, file: MediaFile, framerate: float | None) -> list[BucketKey]:
        """The size buckets ``file`` lands in (one per resolution); [] when it is dropped."""
        frames = file.frames_at(framerate)
        if frames is None or file.width is None or file.height is None:
            return []
        log_ar = float(np.log(file.width / file.height))
        if self.size_buckets is not None:
            bucket = self._closest_size_bucket(log_ar, frames)
            return [] if bucket is None else [bucket]
        ar_frames = self._closest_ar_bucket(log_ar, frames)
        if ar_frames is None:
            return []
        ar, frame_bucket = ar_frames
        keys: list[BucketKey] = []
        for res in self.resolutions:
            area = res**2
            w = math.sqrt(area * ar)
            h = area / w
            keys.append((ar, _round_to(w), _round_to(h), frame_bucket))
        return keys

    def _closest_ar_bucket(self, log_ar: float, frames: int) -> tuple[float, int] | None:
        # utils/dataset.py _find_closest_ar_bucket, index for index (j indexes the fitting
        # prefix of the sorted frame buckets, which is the same position).
        i = int(np.argmin(np.abs(log_ar - np.log(self.ars))))
        diffs = frames - self.frame_buckets
        fitting = diffs[diffs >= 0]
        if len(fitting) == 0:
            return None
        j = int(np.argmin(fitting))
        if frames > 1 and self.frame_buckets[j] == 1:
            return None
        return float(self.ars[i]), int(self.frame_buckets[j])

    def _closest_size_bucket(self, log_ar: float, frames: int) -> BucketKey | None:
        # _find_closest_size_bucket: candidates ordered by the AR distance of the *deduplicated*
        # AR list, used as indices into the size bucket list, exactly as diffusion-pipe does.
        order = np.argsort(np.abs(log_ar - np.log(self.ars)), kind="stable")
        for bucket in self.size_buckets[order]:
            if frames > 1 and bucket[-1] == 1:
                continue
            if frames >= bucket[-1]:
                return tuple(float(x) for x in bucket)
        return None


def _round_to(x: float, multiple: int = PIXELS_ROUND_TO_MULTIPLE) -> int:
    """utils/common.py round_to_nearest_multiple (Python's round: halves go to even)."""
    return int(round(x / multiple) * multiple)


def _dedup_and_sort(values: Sequence[Any]) -> Any:
    # Values keep their types: ``round`` of a numpy float is numpy's rounding, as upstream.
    return np.array(sorted({round(x, _ROUND_DECIMALS) for x in values}))


def _directory(table: Mapping[str, Any], dataset: Mapping[str, Any]) -> _Directory:
    def setting(key: str, default: Any = None) -> Any:
        return table.get(key, dataset.get(key, default))

    size_buckets = setting("size_buckets")
    if size_buckets is not None:
        ordered = sorted(size_buckets, key=lambda bucket: bucket[-1], reverse=True)
        sizes = np.array(ordered)
        ars = _dedup_and_sort([w / h for w, h, _ in sizes])
        resolutions: tuple[float, ...] = ()
    else:
        sizes = None
        if "resolutions" not in table and "resolutions" not in dataset:
            raise ValueError("dataset.toml sets neither resolutions nor size_buckets")
        resolutions = tuple(_dedup_and_sort([_side(r) for r in setting("resolutions")]))
        ars = _aspect_ratios(setting)
    frame_buckets = list(setting("frame_buckets", [1]))
    if 1 not in frame_buckets:
        frame_buckets.append(1)
    repeats = setting("num_repeats", 1)
    if repeats <= 0:
        raise ValueError(f"num_repeats must be >0, was {repeats}")
    shuffles = int(setting("cache_shuffle_num", 0))
    return _Directory(
        path=Path(table["path"]),
        num_repeats=repeats,
        captions_per_item=max(1, shuffles),
        skip_empty_caption=bool(setting("skip_empty_caption", True)),
        ars=ars,
        frame_buckets=np.array(sorted(frame_buckets)),
        resolutions=tuple(float(r) for r in resolutions),
        size_buckets=sizes,
    )


def _side(resolution: Any) -> Any:
    if isinstance(resolution, list | tuple):
        return math.sqrt(resolution[0] * resolution[1])
    return resolution


def _aspect_ratios(setting: Any) -> Any:
    if not setting("enable_ar_bucket", False):
        return _dedup_and_sort([1.0])
    if ars := setting("ar_buckets"):
        return _dedup_and_sort([a[0] / a[1] if isinstance(a, list | tuple) else a for a in ars])
    for key in ("min_ar", "max_ar", "num_ar_buckets"):
        if setting(key) is None:
            raise ValueError(f"enable_ar_bucket needs {key} (or ar_buckets)")
    spaced = np.geomspace(setting("min_ar"), setting("max_ar"), num=setting("num_ar_buckets"))
    return _dedup_and_sort(list(spaced))


def plan_dataset(
    dataset: Mapping[str, Any], media: Sequence[MediaFile], *, framerate: float | None
) -> dict[BucketKey, list[int]]:
    """Items per size bucket, as indices into ``media`` (repeats and caption variants included).

    A file belongs to the ``[[directory]]`` whose ``path`` equals its ``directory``. The
    item lists are what diffusion-pipe's ``ConcatenatedBatchedDataset`` iterates before rounding.
    """
    buckets: dict[BucketKey, list[int]] = defaultdict(list)
    for table in dataset.get("directory", []):
        rules = _directory(table, dataset)
        entries: dict[BucketKey, list[int]] = defaultdict(list)
        for index, file in enumerate(media):
            if file.directory != rules.path or (rules.skip_empty_caption and not file.captioned):
                continue
            for key in rules.keys_for(file, framerate):
                entries[key].extend([index] * rules.captions_per_item)
        for key, found in entries.items():
            length = int(len(found) * rules.num_repeats)
            buckets[key].extend(found[k % len(found)] for k in range(length))
    return dict(buckets)


@dataclass(frozen=True)
class Batching:
    """The global batch per size bucket, and what an epoch of zero batches does."""

    micro_batch: Mapping[float | None, int]
    image_micro_batch: Mapping[float | None, int]
    gradient_accumulation_steps: int
    data_parallel_world_size: int = 1
    wrap_empty_epoch: bool = False

    @classmethod
    def for_trainer(cls, trainer: Trainer, train: Mapping[str, Any], num_gpus: int) -> Batching:
        gas = int(train.get("gradient_accumulation_steps", 1))
        micro = _per_size(train.get("micro_batch_size_per_gpu", 1))
        if trainer is Trainer.TINY:
            # One process, DeepSpeed's single micro-batch size (the first of a list).
            one: dict[float | None, int] = {None: next(iter(micro.values()))}
            return cls(one, one, gas, 1, wrap_empty_epoch=True)
        image = _per_size(train.get("image_micro_batch_size_per_gpu", micro))
        world = max(1, num_gpus // max(1, int(train.get("pipeline_stages", 1))))
        return cls(micro, image, gas, world)

    def global_batch(self, key: BucketKey) -> int:
        """ConcatenatedBatchedDataset.post_init: the nearest size's micro batch × gas × world."""
        sizes = self.image_micro_batch if key[-1] == 1 else self.micro_batch
        micro = sizes.get(None)
        if micro is None:
            side = math.sqrt(key[-2] * key[-3])
            # The first of equally near sizes wins, as in diffusion-pipe's strict ``<`` loop.
            by_size = [(size, n) for size, n in sizes.items() if size is not None]
            micro = min(by_size, key=lambda item: abs(item[0] - side))[1]
        return micro * self.gradient_accumulation_steps * self.data_parallel_world_size


def _per_size(value: Any) -> dict[float | None, int]:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list):
        return {float(size): int(n) for size, n in value}
    return {None: int(value)}


def steps_per_epoch(
    buckets: Mapping[BucketKey, Sized], batching: Batching, subsample_ratio: float | None = None
) -> int:
    """Σ ⌊items ÷ global batch⌋ over the size buckets, then ``subsample_ratio``'s cut."""
    steps = sum(len(items) // batching.global_batch(key) for key, items in buckets.items())
    if subsample_ratio:
        steps = int(steps * subsample_ratio)
    if steps == 0 and batching.wrap_empty_epoch:
        return 1
    return steps


def run_steps(per_epoch: int, epochs: int, max_steps: Any = None) -> int:
    """train.py's loop: every epoch, or up to the step where ``step >= max_steps``."""
    total = per_epoch * epochs
    if isinstance(max_steps, int) and not isinstance(max_steps, bool):
        total = min(total, max(1, max_steps))
    return total


def predict_total_steps(
    train: Mapping[str, Any],
    dataset: Mapping[str, Any],
    media: Sequence[MediaFile],
    *,
    trainer: Trainer,
    framerate: float | None,
    num_gpus: int = 1,
) -> int:
    """The run's optimizer steps; the simple formula when any file went unmeasured."""
    batching = Batching.for_trainer(trainer, train, num_gpus)
    per_epoch = _fallback_per_epoch(dataset, media, batching)
    if media and all(file.measured for file in media):
        try:
            buckets = plan_dataset(dataset, media, framerate=framerate)
            per_epoch = steps_per_epoch(buckets, batching, dataset.get("subsample_ratio"))
        except (ValueError, TypeError, KeyError, ZeroDivisionError):
            # A malformed pass-through key (``ar_buckets = "wide"``): the trainer reports it
            # with its own message; configure must not crash on it, so it keeps the estimate.
            pass
    return run_steps(per_epoch, int(train["epochs"]), train.get("max_steps"))


def _fallback_per_epoch(
    dataset: Mapping[str, Any], media: Sequence[MediaFile], batching: Batching
) -> int:
    items = 0.0
    for table in dataset.get("directory", []):
        files = sum(1 for file in media if file.directory == Path(table["path"]))
        items += files * table.get("num_repeats", dataset.get("num_repeats", 1))
    per_step = next(iter(batching.micro_batch.values())) * batching.gradient_accumulation_steps
    return max(1, int(items) // (per_step * batching.data_parallel_world_size))
