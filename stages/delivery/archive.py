"""The zip a user downloads from S3 or a temporary host: the newest epoch's folder."""

from __future__ import annotations

import zipfile
from pathlib import Path


def build_archive(model_dir: Path, dest: Path) -> Path:
    """Zip the model folder (LoRA, adapter config, train.toml) under a temp name, then rename."""
    tmp = dest.with_suffix(".zip.partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for item in sorted(model_dir.iterdir()):
            if item.is_file():
                archive.write(item, f"{model_dir.name}/{item.name}")
    tmp.replace(dest)
    return dest
