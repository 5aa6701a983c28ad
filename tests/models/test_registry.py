"""The model registry: names, media, LoRA files, and weights that add up to what loaders read."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.enums import ModelType
from infra.hub import RemoteFile, RepoSnapshot
from stages.registry import MODELS, Weights, spec_for
from tests import hub_repos

REAL_TYPES = [t for t in ModelType if not MODELS[t].builtin]


def test_display_names_are_the_seeds_model_names() -> None:
    """GIVEN the registry THEN each type answers with the seed's ``model_name``."""
    assert {t.value: MODELS[t].display_name for t in REAL_TYPES} == {
        "flux": "Flux",
        "sdxl": "SDXL",
        "wan13": "Wan 1.3B",
        "wan14b_t2v": "Wan 14B T2V",
        "wan14b_i2v": "Wan 14B I2V",
        "qwen": "Qwen Image",
        "z_image_turbo": "Z Image Turbo",
    }


def test_lora_files_are_what_each_save_adapter_writes() -> None:
    """GIVEN diffusion-pipe's save_adapter per model THEN the file the train stage waits for:
    Flux uses diffusers' save_lora_weights, SDXL writes Kohya's lora.safetensors, the rest
    adapter_model.safetensors."""
    assert {t.value: MODELS[t].lora_file for t in REAL_TYPES} == {
        "flux": "pytorch_lora_weights.safetensors",
        "sdxl": "lora.safetensors",
        "wan13": "adapter_model.safetensors",
        "wan14b_t2v": "adapter_model.safetensors",
        "wan14b_i2v": "adapter_model.safetensors",
        "qwen": "adapter_model.safetensors",
        "z_image_turbo": "adapter_model.safetensors",
    }
    assert MODELS[ModelType.TINY].lora_file == "adapter_model.safetensors"


def test_media_each_model_trains_on() -> None:
    """GIVEN the registry THEN Wan trains on videos (I2V only on videos), the rest on images."""
    media = {
        t.value: (MODELS[t].images, MODELS[t].videos, MODELS[t].videos_only) for t in REAL_TYPES
    }
    assert media == {
        "flux": (True, False, False),
        "sdxl": (True, False, False),
        "wan13": (True, True, False),
        "wan14b_t2v": (True, True, False),
        "wan14b_i2v": (False, True, True),
        "qwen": (True, False, False),
        "z_image_turbo": (True, False, False),
    }


def test_only_flux_is_gated() -> None:
    """GIVEN the Hub sources THEN Flux (black-forest-labs) is the one that needs a token."""
    assert [t.value for t in REAL_TYPES if MODELS[t].gated] == ["flux"]


@pytest.mark.parametrize("model_type", REAL_TYPES, ids=str)
def test_required_files_are_downloaded_and_table_paths_are_required(model_type: ModelType) -> None:
    """GIVEN a model's sources WHEN matched against the real repository listing THEN every file
    its loader reads is selected for download, and every weight path in the [model] table is
    one of those files (or the folder holding them)."""
    spec = spec_for(model_type)
    repos = {repo.repo_id: repo for repo in hub_repos.all_repos()}
    selected: set[str] = set()
    for source in spec.sources:
        repo = repos[source.repo_id]
        snapshot = RepoSnapshot(
            repo.repo_id,
            repo.head,
            repo.gated,
            tuple(RemoteFile(p, len(d)) for p, d in repo.files.items()),
        )
        matched = {f.path for f in snapshot.matching(source.allow_patterns)}
        assert set(source.required) <= matched, source.repo_id
        selected |= {f"{source.subdir}/{p}" for p in matched}

    def weights(value: object) -> list[str]:
        if isinstance(value, Weights):
            return [value.relative]
        if isinstance(value, dict):
            return [w for item in value.values() for w in weights(item)]
        if isinstance(value, list):
            return [w for item in value for w in weights(item)]
        return []

    for relative in weights(dict(spec.model_table)):
        assert relative in selected or any(p.startswith(f"{relative}/") for p in selected), relative


def test_paths_resolve_under_the_given_models_folder() -> None:
    """GIVEN a models folder WHEN the table is resolved THEN paths are absolute beneath it and
    the registry's own table is left untouched."""
    spec = spec_for(ModelType.Z_IMAGE_TURBO)
    table = spec.model_table_for(Path("/vol/models/z_image_turbo"))
    assert table["text_encoders"][0]["path"].startswith("/vol/models/z_image_turbo/z_image_turbo/")
    assert isinstance(spec.model_table["text_encoders"][0]["path"], Weights)
