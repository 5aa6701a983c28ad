"""The miniatures' layout: what provision leaves on a volume, accepted offline as provisioned."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.acceptance import layout
from bench.acceptance.layout import Kind
from contracts.enums import ModelType
from infra.hub import cached_snapshot
from stages import provision, weights
from stages.errors import Permanent

REAL_TYPES = [t for t in ModelType if t is not ModelType.TINY]


class _NoHub:
    """Any use of the Hub fails the test: a provisioned volume needs no network."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"provision touched the Hub ({name})")


async def _provision(model_type: ModelType, volume: Path) -> provision.Provisioned:
    plan = layout.plan_for(model_type)
    return await provision.provision_model(
        plan.spec,
        volume / "models" / model_type.value,
        _NoHub(),  # type: ignore[arg-type]
        None,
        hub_cache=provision.hub_cache_dir(volume),
    )


def _write(model_type: ModelType, volume: Path) -> Path:
    models_dir = volume / "models" / model_type.value
    layout.write_layout(layout.plan_for(model_type), models_dir)
    return models_dir


@pytest.mark.parametrize("model_type", REAL_TYPES)
async def test_the_layout_step_leaves_a_folder_provision_takes_by_its_marker(
    model_type: ModelType, tmp_path: Path
) -> None:
    """GIVEN a model type's miniature plan WHEN the layout step writes it (placeholder weights,
    then provision's marker) THEN the worker's provision stage finds it ready by the marker,
    without a token (Flux is gated) and without touching the Hub."""
    _write(model_type, tmp_path)

    ready = await _provision(model_type, tmp_path)

    assert ready.how == "marker"


@pytest.mark.parametrize("model_type", REAL_TYPES)
async def test_without_the_marker_every_loader_file_is_still_found(
    model_type: ModelType, tmp_path: Path
) -> None:
    """GIVEN the layout without its marker WHEN provision checks the folder THEN every file
    the registry says the loader opens is there and sound (pre-provisioned, no download)."""
    models_dir = _write(model_type, tmp_path)
    weights.marker_path(models_dir).unlink()

    findings = weights.inspect(layout.plan_for(model_type).spec, models_dir)
    ready = await _provision(model_type, tmp_path)

    assert findings.complete, findings.describe()
    assert ready.how == "preprovisioned"


@pytest.mark.parametrize("model_type", REAL_TYPES)
def test_every_required_file_is_planned(model_type: ModelType) -> None:
    """GIVEN the registry's sources WHEN compared with the plan THEN each required path (and
    each pinned JSON value) is one the plan writes."""
    plan = layout.plan_for(model_type)
    planned = {f.path: f for f in plan.files}
    for source in plan.spec.sources:
        for required in source.required:
            assert f"{source.subdir}/{required}" in planned
        for relative, expected in source.expect_json.items():
            content = planned[f"{source.subdir}/{relative}"].content
            assert {k: content[k] for k in expected} == dict(expected)


async def test_a_wan_config_of_another_variant_is_refused(tmp_path: Path) -> None:
    """GIVEN the 1.3B miniature's config.json changed to the 14B's width, and no marker WHEN
    provision checks it THEN it fails for good: the miniature must keep the real variant's dim
    (which is also what diffusion-pipe detects the variant by)."""
    models_dir = _write(ModelType.WAN13, tmp_path)
    weights.marker_path(models_dir).unlink()
    config = models_dir / "Wan2.1-T2V-1.3B" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "dim": 5120}))

    with pytest.raises(Permanent) as refused:
        await _provision(ModelType.WAN13, tmp_path)

    assert "dim" in str(refused.value)


def test_sdxl_configs_are_where_huggingface_hub_looks_offline(tmp_path: Path) -> None:
    """GIVEN the SDXL layout WHEN huggingface_hub's offline look-up asks for the base repository
    THEN it finds the snapshot in the volume's cache with every file the registry names."""
    _write(ModelType.SDXL, tmp_path)
    spec = layout.plan_for(ModelType.SDXL).spec

    for repo in getattr(spec, "hub_cache", ()):
        folder = cached_snapshot(
            repo.repo_id, repo.revision, provision.hub_cache_dir(tmp_path), repo.allow_patterns
        )
        assert folder is not None
        assert all((folder / path).is_file() for path in repo.required)


def test_a_rewritten_plan_never_writes_through_a_hard_link(tmp_path: Path) -> None:
    """GIVEN Wan's big shared file hard-linked into a folder WHEN the plan is written over the
    folder again (placeholders first) THEN the shared file keeps its content."""
    models_dir = _write(ModelType.WAN13, tmp_path)
    shared = tmp_path / "shared.pth"
    shared.write_bytes(b"the real weights" * 100)
    linked = models_dir / "Wan2.1-T2V-1.3B" / layout.WAN_T5
    linked.unlink()
    linked.hardlink_to(shared)

    layout.write_files(layout.plan_for(ModelType.WAN13).files, models_dir, None)

    assert shared.read_bytes() == b"the real weights" * 100
    assert linked.read_bytes() != shared.read_bytes()


def test_a_missing_planned_file_is_reported(tmp_path: Path) -> None:
    """GIVEN a written Flux layout WHEN one planned file is removed THEN the check names it."""
    models_dir = _write(ModelType.FLUX, tmp_path)
    (models_dir / "FLUX.1-dev" / "vae" / "config.json").unlink()

    assert layout.missing_from_plan(layout.plan_for(ModelType.FLUX), models_dir) == [
        "FLUX.1-dev/vae/config.json"
    ]


def test_copied_tokenizer_files_come_from_diffusion_pipe_when_it_is_there(tmp_path: Path) -> None:
    """GIVEN a diffusion-pipe tree WHEN the Flux plan is written with it THEN the T5 files are
    its bytes; without one they are placeholders naming the source."""
    dp = tmp_path / "dp"
    (dp / "configs" / "t5_old").mkdir(parents=True)
    (dp / "configs" / "t5_old" / "spiece.model").write_bytes(b"sentencepiece bytes")
    files = tuple(f for f in layout.plan_for(ModelType.FLUX).files if f.kind is Kind.COPY)

    layout.write_files(files, tmp_path / "with", dp)
    layout.write_files(files, tmp_path / "without", None)

    spiece = "FLUX.1-dev/tokenizer_2/spiece.model"
    assert (tmp_path / "with" / spiece).read_bytes() == b"sentencepiece bytes"
    assert "configs/t5_old/spiece.model" in (tmp_path / "without" / spiece).read_text()
