"""tiny's latent cache, with diffusion-pipe's three flags and their failure modes.

Upstream (``utils/dataset.py`` at 8f83dbf) caches under each directory's ``cache/<model name>/``
(line 482) before every run, training or ``--cache_only`` (train.py lines 516-518):
- metadata first (``cache_metadata``, line 533), latents after it, appended to shards that are
  not written atomically (``utils/cache.py`` ``add``);
- ``--trust_cache`` takes the cached metadata as it is when its folders exist, without
  fingerprinting the dataset again (line 554); a torn cache is then trusted and breaks the run;
- ``--regenerate_cache`` clears the cache and builds it anew (lines 99-100);
- otherwise the fingerprint is recomputed, and a changed dataset rebuilds the cache.

tiny keeps the same order and the same trust: ``metadata.json`` (the dataset's fingerprint) is
written first, then ``latents.pt`` in place. Its "latents" are the decoded, cropped images and
captions the model trains on. A torn ``latents.pt`` under ``--trust_cache`` fails the run,
as upstream's would: loraq must never trust a cache whose caching run did not finish.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from stages.dataset_scan import media_paths
from stages.tiny_trainer.data import DatasetSpec, ImageDataset, load_dataset

MODEL_NAME = "tiny"
METADATA = "metadata.json"
LATENTS = "latents.pt"


def cache_dir(spec: DatasetSpec) -> Path:
    return spec.directories[0].path / "cache" / MODEL_NAME


def cached_dataset(spec: DatasetSpec, *, regenerate: bool, trust: bool) -> ImageDataset:
    """The dataset from the cache where the flags allow it, else decoded and cached."""
    folder = cache_dir(spec)
    if regenerate and folder.exists():
        print("[CACHE] --regenerate_cache: deleting existing cache files", flush=True)
        shutil.rmtree(folder)
    metadata = folder / METADATA
    if trust and metadata.is_file():
        print("[CACHE] Found cached metadata, trusting it (--trust_cache)", flush=True)
        return _load(folder)
    fingerprint = dataset_fingerprint(spec)
    if metadata.is_file() and _read_fingerprint(metadata) == fingerprint:
        try:
            dataset = _load(folder)
        except (OSError, RuntimeError, EOFError, KeyError, ValueError) as exc:
            print(f"[CACHE] Cache is incomplete ({type(exc).__name__}), rebuilding", flush=True)
        else:
            print("[CACHE] Cache is up to date", flush=True)
            return dataset
    return _build(spec, folder, fingerprint)


def _build(spec: DatasetSpec, folder: Path, fingerprint: str) -> ImageDataset:
    dataset = load_dataset(spec)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / METADATA).write_text(json.dumps({"fingerprint": fingerprint, "items": len(dataset)}))
    torch.save(
        {
            "images": dataset.images,
            "captions": list(dataset.captions),
            "items": list(dataset.items),
            "bucket_sizes": list(dataset.bucket_sizes),
            "subsample_ratio": dataset.subsample_ratio,
        },
        folder / LATENTS,
    )
    print(f"[CACHE] Cached {len(dataset.images)} images in {folder}", flush=True)
    return dataset


def _load(folder: Path) -> ImageDataset:
    state: dict[str, Any] = torch.load(folder / LATENTS, weights_only=True, map_location="cpu")
    return ImageDataset(
        state["images"],
        tuple(state["captions"]),
        tuple(state["items"]),
        tuple(state["bucket_sizes"]),
        state["subsample_ratio"],
    )


def _read_fingerprint(metadata: Path) -> str | None:
    try:
        value = json.loads(metadata.read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def dataset_fingerprint(spec: DatasetSpec) -> str:
    """What the cached tensors depend on: the dataset settings and every file's name, size and
    modification time (captions included), as upstream fingerprints its metadata."""
    digest = hashlib.sha256(json.dumps(spec.settings, sort_keys=True, default=str).encode())
    for directory in spec.directories:
        for path in media_paths(directory.path):
            for file in (path, path.with_suffix(".txt")):
                if file.is_file():
                    stat = file.stat()
                    digest.update(f"{file}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
