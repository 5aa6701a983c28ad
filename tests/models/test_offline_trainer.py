"""The trainer needs no Hub: what its loaders fetch by repo id is provisioned, and it runs offline.

diffusion-pipe's SDXL loader (models/sdxl.py:385 at 8f83dbf) calls diffusers'
``StableDiffusionXLPipeline.from_single_file`` without a ``config``: diffusers infers
``stabilityai/stable-diffusion-xl-base-1.0`` from the checkpoint's keys and ``snapshot_download``s
the pipeline's configs, tokenizers and scheduler (diffusers 0.42.1 loaders/single_file.py:251).
Provisioning puts them in the volume's Hugging Face cache; the trainer gets ``HF_HUB_OFFLINE=1``
and ``HF_HUB_CACHE`` pointing there. These tests run the real diffusers call in a subprocess with
the trainer's environment, with the local Hub stopped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import snapshot_download

from contracts.enums import ModelType
from infra.hub import HubClient
from infra.settings import Settings
from stages.errors import Retryable
from stages.provision import Provisioned, hub_cache_dir, provision_model
from stages.registry import MODELS, spec_for
from stages.trainer.launcher import build_launch, trainer_env
from tests import hub_repos
from tests.hub_server import LocalHub

SDXL_CHECKPOINT = "stable-diffusion-xl-base-1.0/sd_xl_base_1.0.safetensors"
# diffusion-pipe's own call, with the four weight-bearing components passed in as None:
# converting them needs a real 6.9 GB checkpoint. Their configs, read from the same snapshot,
# are among the files the provision check requires.
_FROM_SINGLE_FILE = """
import sys, torch, diffusers
pipe = diffusers.StableDiffusionXLPipeline.from_single_file(
    sys.argv[1], torch_dtype=torch.bfloat16, add_watermarker=False,
    unet=None, vae=None, text_encoder=None, text_encoder_2=None,
)
print(type(pipe.tokenizer).__name__, type(pipe.tokenizer_2).__name__,
      type(pipe.scheduler).__name__, pipe.tokenizer("a b").input_ids)
"""


def _settings(volume: Path) -> Settings:
    return Settings(queue_url="http://unused", volume=volume)


async def _provision_sdxl(hub_url: str, volume: Path) -> Provisioned:
    return await provision_model(
        spec_for(ModelType.SDXL),
        volume / "models" / "sdxl",
        HubClient(hub_url),
        None,
        poll_s=0.02,
        retry_wait_s=0.0,
    )


def _load_like_the_trainer(volume: Path) -> subprocess.CompletedProcess[str]:
    checkpoint = volume / "models" / "sdxl" / SDXL_CHECKPOINT
    return subprocess.run(
        [sys.executable, "-c", _FROM_SINGLE_FILE, str(checkpoint)],
        env=trainer_env(_settings(volume)),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _snapshot(volume: Path) -> Path:
    snapshots = hub_cache_dir(volume) / f"models--{hub_repos.SDXL.replace('/', '--')}" / "snapshots"
    (folder,) = snapshots.iterdir()
    return folder


async def test_a_provisioned_sdxl_loads_in_diffusers_with_the_hub_gone(
    local_hub: LocalHub, tmp_path: Path
) -> None:
    """GIVEN SDXL provisioned from the Hub WHEN the Hub is gone and diffusers' from_single_file
    runs with the trainer's environment THEN it finds the pipeline's configs, both tokenizers and
    the scheduler in the volume's cache, which holds none of the repository's weights."""
    await _provision_sdxl(local_hub.url, tmp_path)
    local_hub.stop()

    loaded = _load_like_the_trainer(tmp_path)

    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.split(maxsplit=3)[:3] == [
        "CLIPTokenizer",
        "CLIPTokenizer",
        "EulerDiscreteScheduler",
    ]
    cached = {p.relative_to(_snapshot(tmp_path)).as_posix() for p in _snapshot(tmp_path).rglob("*")}
    assert "text_encoder/model.safetensors" not in cached
    assert "sd_xl_base_1.0.safetensors" not in cached


async def test_without_the_cache_diffusers_fails_offline_at_once(
    local_hub: LocalHub, tmp_path: Path
) -> None:
    """GIVEN the SDXL checkpoint alone (a volume provisioned before the cache existed) WHEN
    diffusers loads it with the trainer's environment THEN it fails without trying the Hub:
    the failure the provision check below exists to prevent."""
    await _provision_sdxl(local_hub.url, tmp_path)
    local_hub.stop()
    shutil.rmtree(hub_cache_dir(tmp_path))

    loaded = _load_like_the_trainer(tmp_path)

    assert loaded.returncode != 0
    assert "LocalEntryNotFoundError" in loaded.stderr
    assert "HF_HUB_OFFLINE" in loaded.stderr


async def test_huggingface_hub_resolves_the_files_offline_from_the_trainers_cache(
    local_hub: LocalHub, tmp_path: Path
) -> None:
    """GIVEN SDXL provisioned WHEN huggingface_hub runs with HF_HUB_OFFLINE=1 and the trainer's
    HF_HUB_CACHE, and the exact snapshot_download diffusers makes THEN it returns the snapshot
    without a request to the Hub."""
    await _provision_sdxl(local_hub.url, tmp_path)
    requests_before = len(local_hub.state.log)
    env = trainer_env(_settings(tmp_path))
    patterns = list(spec_for(ModelType.SDXL).hub_cache[0].allow_patterns)
    script = (
        "from huggingface_hub import snapshot_download; "
        f"print(snapshot_download({hub_repos.SDXL!r}, allow_patterns={patterns!r}))"
    )
    env["HF_ENDPOINT"] = local_hub.url  # were it online, it would ask this Hub

    found = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )

    assert found.returncode == 0, found.stderr[-2000:]
    assert Path(found.stdout.strip()) == _snapshot(tmp_path)
    assert len(local_hub.state.log) == requests_before


@pytest.mark.parametrize("model_type", list(ModelType), ids=str)
def test_the_trainer_runs_offline_for_every_model_type(
    tmp_path: Path, model_type: ModelType
) -> None:
    """GIVEN a worker whose own environment allows the Hub and names another cache WHEN a
    trainer is launched for any model type THEN it runs offline, reading the volume's cache."""
    base = {"HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": "/home/worker/.cache/huggingface/hub"}
    settings = _settings(tmp_path)

    launch = build_launch(settings, MODELS[model_type], tmp_path / "train.toml")

    assert launch.env["HF_HUB_OFFLINE"] == "1"
    assert launch.env["HF_HUB_CACHE"] == str(tmp_path / "models" / "hf-cache")
    env = trainer_env(settings, base=base)
    assert (env["HF_HUB_OFFLINE"], env["HF_HUB_CACHE"]) == ("1", str(hub_cache_dir(tmp_path)))


async def test_a_volume_provisioned_before_the_cache_fetches_only_the_cache(
    local_hub: LocalHub, tmp_path: Path
) -> None:
    """GIVEN SDXL's checkpoint and marker but no Hub cache WHEN provisioned THEN it is not taken
    as ready: the config files are fetched and the 6.9 GB checkpoint is not fetched again."""
    await _provision_sdxl(local_hub.url, tmp_path)
    shutil.rmtree(hub_cache_dir(tmp_path))

    again = await _provision_sdxl(local_hub.url, tmp_path)

    assert (again.how, again.downloaded_bytes) == ("downloaded", 0)
    assert (_snapshot(tmp_path) / "tokenizer_2" / "vocab.json").is_file()
    assert (await _provision_sdxl(local_hub.url, tmp_path)).how == "marker"


@pytest.mark.parametrize(
    "lost",
    [
        "tokenizer/vocab.json",  # a file diffusers opens
        "vae_1_0/config.json",  # read by no component, but huggingface_hub refuses the snapshot
    ],
)
async def test_the_provision_check_fails_when_a_cached_file_is_missing(
    local_hub: LocalHub, tmp_path: Path, lost: str
) -> None:
    """GIVEN a provisioned SDXL whose cached snapshot lost a file WHEN the Hub is unreachable
    THEN provisioning fails as retryable instead of passing a volume the trainer cannot load;
    with the Hub back the file is fetched again."""
    await _provision_sdxl(local_hub.url, tmp_path)
    (_snapshot(tmp_path) / lost).unlink()

    with pytest.raises(Retryable):
        await _provision_sdxl("http://127.0.0.1:9", tmp_path)
    assert (await _provision_sdxl(local_hub.url, tmp_path)).how == "downloaded"
    assert (_snapshot(tmp_path) / lost).is_file()


async def test_an_operators_hf_download_into_the_cache_counts(
    local_hub: LocalHub, tmp_path: Path
) -> None:
    """GIVEN the cache filled by hand the way ``hf download --cache-dir`` does WHEN the Hub is
    gone THEN the check finds it complete: it asks what huggingface_hub finds, not how it got
    there."""
    await _provision_sdxl(local_hub.url, tmp_path)
    shutil.rmtree(hub_cache_dir(tmp_path))
    spec = spec_for(ModelType.SDXL)
    snapshot_download(
        hub_repos.SDXL,
        cache_dir=hub_cache_dir(tmp_path),
        allow_patterns=list(spec.hub_cache[0].allow_patterns),
        endpoint=local_hub.url,
        token=False,
    )
    local_hub.stop()

    assert (await _provision_sdxl("http://127.0.0.1:9", tmp_path)).how == "marker"
