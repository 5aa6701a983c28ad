"""Latent caching is its own recorded step: real trainer processes, no queue needed."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from contracts.enums import ModelType, StageName
from contracts.ledger import Ledger
from contracts.request import JobRequest
from infra.settings import Settings
from infra.volume import JobStore, utcnow
from loraq.sample_data import write_image_dataset
from stages import registry, train
from stages.configure import build_configs, write_configs
from stages.context import StageContext

pytestmark = pytest.mark.slow


async def _ignore(*_: object) -> None:
    return None


async def test_a_torn_cache_is_regenerated_then_trusted_for_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN a model that caches latents and a ledger saying a caching run started but never
    finished WHEN the train stage runs THEN it re-caches with --regenerate_cache, records the
    cache as done, and trains with --trust_cache; a second caching call launches nothing."""
    spec = dataclasses.replace(registry.MODELS[ModelType.TINY], caches_latents=True)
    monkeypatch.setitem(registry.MODELS, ModelType.TINY, spec)
    store = JobStore(tmp_path)
    paths = store.paths("cache-job")
    write_image_dataset(paths.dataset / "images", count=2)
    request = JobRequest.model_validate(
        {
            "input": {
                "model_type": "tiny",
                "dataset": {"type": "precaptioned", "images_url": "https://x/y.zip"},
                "training": {
                    "epochs": 1,
                    "gradient_accumulation_steps": 1,
                    "lora_rank": 4,
                    "save_every_n_epochs": 1,
                    "warmup_steps": 0,
                },
            }
        }
    ).input
    write_configs(build_configs(request, paths, tmp_path, {"images": 2}), paths.config)
    now = utcnow()
    ledger = Ledger(job_id="cache-job", model_type=ModelType.TINY, created_at=now, updated_at=now)
    ledger.stage(StageName.CONFIGURE).outputs["total_steps"] = 2
    ledger.stage(StageName.TRAIN).outputs[train.CACHING_STARTED] = True  # died mid-caching
    # ...and what that caching run left: metadata written, latents torn (tiny's cache keeps
    # upstream's order). Trusting it would fail the run; regenerating it must not.
    torn = paths.dataset / "images" / "cache" / "tiny"
    torn.mkdir(parents=True)
    (torn / "metadata.json").write_text('{"fingerprint": "stale", "items": 2}')
    (torn / "latents.pt").write_bytes(b"PK\x03\x04 half a file")
    ctx = StageContext(
        job_id="cache-job",
        request=request,
        paths=paths,
        store=store,
        settings=Settings(queue_url="q", volume=tmp_path),
        ledger=ledger,
        emit=_ignore,
        stop_requested=asyncio.Event(),
    )

    outcome = await train.run(ctx)

    assert outcome.outputs[train.LATENTS_CACHED] is True
    launches = [
        line for line in (paths.root / train.LOG_FILE).read_text().splitlines() if "cmd = " in line
    ]
    assert len(launches) == 2
    assert "--cache_only" in launches[0] and "--regenerate_cache" in launches[0]
    assert "--trust_cache" in launches[1] and "--cache_only" not in launches[1]
    saved = store.load_ledger("cache-job")  # recorded before training started
    assert saved is not None and saved.stage(StageName.TRAIN).outputs[train.LATENTS_CACHED]
    log = (paths.root / train.LOG_FILE).read_text()
    assert "deleting existing cache files" in log and "trusting it (--trust_cache)" in log
    assert await train._cache_latents(ctx, spec) is True  # recorded: no third launch
    assert (
        len(
            [
                line
                for line in (paths.root / train.LOG_FILE).read_text().splitlines()
                if "cmd = " in line
            ]
        )
        == 2
    )
