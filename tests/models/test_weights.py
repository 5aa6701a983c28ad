"""The weights folder's checks and lock, on files written here (no Hub involved)."""

from __future__ import annotations

import json
from pathlib import Path

from contracts.enums import ModelType
from stages import weights
from stages.registry import spec_for
from stages.weights_lock import WeightsLock, lock_path
from tests import hub_repos


def _write(folder: Path, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)


def test_a_complete_copy_passes_and_each_defect_is_named(tmp_path: Path) -> None:
    """GIVEN Qwen-Image's files copied by hand WHEN inspected THEN complete; after truncating a
    shard and removing another, the one is damaged and the other missing, by path."""
    models_dir = tmp_path / "qwen"
    _write(models_dir / "Qwen-Image", hub_repos.qwen().files)
    spec = spec_for(ModelType.QWEN)
    assert weights.inspect(spec, models_dir).complete

    shard = (
        models_dir
        / "Qwen-Image"
        / "transformer"
        / "diffusion_pytorch_model-00002-of-00009.safetensors"
    )
    shard.write_bytes(shard.read_bytes()[:-4])
    (models_dir / "Qwen-Image" / "text_encoder" / "model-00003-of-00004.safetensors").unlink()

    found = weights.inspect(spec, models_dir)
    assert found.damaged == (
        "Qwen-Image/transformer/diffusion_pytorch_model-00002-of-00009.safetensors",
    )
    assert found.missing == ("Qwen-Image/text_encoder/model-00003-of-00004.safetensors",)
    assert not found.wrong


def test_a_file_that_is_not_safetensors_is_damaged(tmp_path: Path) -> None:
    """GIVEN an HTML error page saved under a weights name WHEN inspected THEN it is damaged."""
    models_dir = tmp_path / "sdxl"
    _write(
        models_dir / "stable-diffusion-xl-base-1.0",
        {"sd_xl_base_1.0.safetensors": b"<html>403</html>"},
    )
    found = weights.inspect(spec_for(ModelType.SDXL), models_dir)
    assert found.damaged == ("stable-diffusion-xl-base-1.0/sd_xl_base_1.0.safetensors",)


def test_the_marker_stops_vouching_when_a_file_changes(tmp_path: Path) -> None:
    """GIVEN a marker listing a file's size WHEN the file shrinks THEN the marker is not trusted."""
    spec = spec_for(ModelType.SDXL)
    models_dir = tmp_path / "sdxl"
    data = hub_repos.sdxl().files["sd_xl_base_1.0.safetensors"]
    _write(models_dir / "stable-diffusion-xl-base-1.0", {"sd_xl_base_1.0.safetensors": data})
    record = weights.SourceRecord(
        repo_id=hub_repos.SDXL,
        revision="main",
        commit="c" * 40,
        subdir="stable-diffusion-xl-base-1.0",
        files={"sd_xl_base_1.0.safetensors": len(data)},
    )
    weights.write_marker(spec, models_dir, [record])
    assert weights.read_marker(spec, models_dir) is not None
    assert json.loads((models_dir / ".complete").read_text())["sources"][0]["commit"] == "c" * 40

    (models_dir / "stable-diffusion-xl-base-1.0" / "sd_xl_base_1.0.safetensors").write_bytes(
        data[:-1]
    )
    assert weights.read_marker(spec, models_dir) is None


def test_the_lock_excludes_a_second_holder_in_the_same_process(tmp_path: Path) -> None:
    """GIVEN one holder WHEN a second (another worker slot) tries THEN it is refused, although
    POSIX locks alone would let the same process in twice; after release it gets it."""
    path = lock_path(tmp_path / "models" / "flux")
    first, second = WeightsLock(path), WeightsLock(path)
    assert first.try_acquire()
    assert not second.try_acquire()
    first.release()
    assert second.try_acquire()
    second.release()
