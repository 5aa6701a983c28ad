"""The caption stage with JoyCaption: the real transformers loading, preprocessing, batched
generation and decoding, on a tiny randomly initialised JoyCaption-shaped model on the CPU."""

from __future__ import annotations

import asyncio
import gc
import shutil
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from transformers import LlavaForConditionalGeneration

from contracts.enums import ErrorCode, StageName
from contracts.request import JobRequest
from infra.volume import MODELS_DIR
from stages import caption
from stages.context import StageContext
from stages.errors import Interrupted, Permanent
from stages.registry import JOYCAPTION_REPO
from stages.weights import MARKER_FILE
from tests.captioning import tiny_joycaption
from tests.captioning.conftest import make_context
from tests.hub_server import HubRepo, LocalHub
from tests.media import write_image

TRIGGER = "lqshape"
WEIGHTS = Path(MODELS_DIR) / "joycaption" / JOYCAPTION_REPO.rsplit("/", 1)[-1]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_joycaption.build(tmp_path_factory.mktemp("joycaption") / "model")


class Spy:
    """Counts the real model's loads and generate calls; keeps only weak references."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.loaded: list[weakref.ref[LlavaForConditionalGeneration]] = []


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    seen = Spy()
    generate = LlavaForConditionalGeneration.generate
    load = LlavaForConditionalGeneration.from_pretrained.__func__  # type: ignore[attr-defined]

    def counting_generate(self: LlavaForConditionalGeneration, **kwargs: Any) -> Any:
        seen.batches.append(int(kwargs["input_ids"].shape[0]))
        return generate(self, **kwargs)

    def watched_load(cls: type, *args: Any, **kwargs: Any) -> Any:
        model = load(cls, *args, **kwargs)
        seen.loaded.append(weakref.ref(model))
        return model

    monkeypatch.setattr(LlavaForConditionalGeneration, "generate", counting_generate)
    monkeypatch.setattr(LlavaForConditionalGeneration, "from_pretrained", classmethod(watched_load))
    return seen


def _request(dataset_type: str = "images") -> JobRequest:
    return JobRequest.model_validate(
        {
            "input": {
                "model_type": "sdxl",
                "dataset": {
                    "type": dataset_type,
                    "images_url": "https://images.test/i.zip",
                    "trigger_word": TRIGGER,
                },
                "output": {"method": "local"},
            }
        }
    )


def _context(volume: Path, model: Path | None, **settings: Any) -> StageContext:
    """A stage context whose volume holds ``model`` (copied) as provisioned JoyCaption weights."""
    if model is not None:
        shutil.copytree(model, volume / WEIGHTS)
    values = {"joycaption_device": "cpu", "joycaption_max_new_tokens": 6, **settings}
    return make_context(volume, "http://127.0.0.1:9", _request(), **values)


def _images(ctx: StageContext, names: list[str]) -> list[Path]:
    folder = ctx.paths.dataset / "images"
    return [write_image(folder / name, size=12 + 5 * i) for i, name in enumerate(names)]


async def test_images_are_captioned_in_batches_and_the_model_is_freed(
    tmp_path: Path, tiny_model: Path, spy: Spy
) -> None:
    """GIVEN three images without captions and batch size 2 WHEN the caption stage runs
    THEN JoyCaption is loaded once and called twice (2 + 1 images), each image has a non-empty
    caption led by the trigger word once, and after the stage no reference to the model is
    left (its memory is free for the trainer)."""
    ctx = _context(tmp_path, tiny_model, joycaption_batch_size=2)
    images = _images(ctx, ["a.png", "b.jpg", "c.webp"])

    outcome = await caption.run(ctx)

    assert spy.batches == [2, 1] and len(spy.loaded) == 1
    for image in images:
        text = image.with_suffix(".txt").read_text()
        assert text.startswith(f"{TRIGGER}, ") and len(text) > len(f"{TRIGGER}, ")
        assert text.count(TRIGGER) == 1
    assert outcome.outputs["captioned"] == 3 and outcome.outputs["caption_skipped_count"] == 0
    gc.collect()
    assert spy.loaded[0]() is None


async def test_captions_already_written_are_kept(
    tmp_path: Path, tiny_model: Path, spy: Spy
) -> None:
    """GIVEN one image captioned by an earlier (crashed) attempt WHEN the stage runs twice
    THEN only the other two images go through the model, once, and no caption changes on the
    second run (which does not even load the model)."""
    ctx = _context(tmp_path, tiny_model, joycaption_batch_size=4)
    done, *todo = _images(ctx, ["done.png", "x.png", "y.png"])
    done.with_suffix(".txt").write_text(f"{TRIGGER}, written before the crash")

    await caption.run(ctx)
    first = {p: p.with_suffix(".txt").read_text() for p in [done, *todo]}
    await caption.run(ctx)

    assert first[done] == f"{TRIGGER}, written before the crash"
    assert spy.batches == [2] and len(spy.loaded) == 1
    assert {p: p.with_suffix(".txt").read_text() for p in first} == first


async def test_a_corrupt_image_is_skipped_with_a_warning(
    tmp_path: Path, tiny_model: Path, spy: Spy
) -> None:
    """GIVEN two images and a file named like an image that is not one WHEN the stage runs
    THEN the two are captioned, the broken one is removed and named in the outputs."""
    ctx = _context(tmp_path, tiny_model)
    good_a, good_b = _images(ctx, ["a.png", "b.png"])
    broken = ctx.paths.dataset / "images" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but nothing after the signature")

    outcome = await caption.run(ctx)

    assert good_a.with_suffix(".txt").exists() and good_b.with_suffix(".txt").exists()
    assert not broken.exists() and not broken.with_suffix(".txt").exists()
    assert outcome.outputs["caption_skipped"] == "broken.png"
    assert outcome.outputs["captioned"] == 2 and spy.batches == [2]


async def test_images_with_no_caption_at_all_fail_the_dataset(
    tmp_path: Path, tiny_model: Path
) -> None:
    """GIVEN a model that can only emit special tokens (every caption decodes to nothing)
    WHEN the stage runs THEN each image is skipped, and with nothing left the job fails
    permanently with dataset_invalid on the images URL."""
    ctx = _context(tmp_path, tiny_model)
    tiny_joycaption.make_speechless(tmp_path / WEIGHTS)
    _images(ctx, ["a.png", "b.png"])

    with pytest.raises(Permanent, match=r"a\.png, b\.png") as failed:
        await caption.run(ctx)
    assert failed.value.code is ErrorCode.DATASET_INVALID
    assert failed.value.field == "dataset.images_url"


async def test_a_stopping_worker_stops_between_batches(
    tmp_path: Path, tiny_model: Path, spy: Spy
) -> None:
    """GIVEN the worker is shutting down WHEN the stage would start a batch THEN it raises
    Interrupted for the caption stage, and the model it loaded is released all the same."""
    ctx = _context(tmp_path, tiny_model)
    _images(ctx, ["a.png"])
    ctx.stop_requested.set()

    with pytest.raises(Interrupted) as stopped:
        await caption.run(ctx)
    assert stopped.value.stage is StageName.CAPTION and spy.batches == []
    gc.collect()
    assert [ref() for ref in spy.loaded] == [None]


@pytest.fixture
def joycaption_hub(tiny_model: Path) -> Iterator[LocalHub]:
    hub = LocalHub().start()
    files = {p.name: p.read_bytes() for p in tiny_model.iterdir() if p.is_file()}
    hub.add_repo(HubRepo(JOYCAPTION_REPO, files={**files, "README.md": b"# JoyCaption\n"}))
    try:
        yield hub
    finally:
        hub.stop()


async def test_weights_are_provisioned_from_the_hub_on_first_use(
    tmp_path: Path, joycaption_hub: LocalHub, spy: Spy
) -> None:
    """GIVEN a volume without JoyCaption and a Hub that has it WHEN two jobs caption images
    THEN the first downloads the weights (not the README) and marks the folder complete, the
    second finds them by the marker without downloading again."""
    first = _context(tmp_path, None, hf_endpoint=joycaption_hub.url)
    _images(first, ["a.png"])
    await caption.run(first)
    downloads = joycaption_hub.file_gets(JOYCAPTION_REPO)

    second = _context(tmp_path, None, hf_endpoint=joycaption_hub.url)
    second.paths.dataset.joinpath("images", "a.txt").unlink()
    await caption.run(second)

    assert (tmp_path / MODELS_DIR / "joycaption" / MARKER_FILE).is_file()
    assert not (tmp_path / WEIGHTS / "README.md").exists()
    assert any(r.path.endswith("model.safetensors.index.json") for r in downloads)
    assert joycaption_hub.file_gets(JOYCAPTION_REPO) == downloads
    assert spy.batches == [1, 1]


async def test_loraq_provision_fills_the_volume_before_any_job(
    tmp_path: Path, joycaption_hub: LocalHub, spy: Spy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN `loraq provision joycaption` run against the Hub WHEN a job then captions images
    THEN the stage finds the weights by their marker and downloads nothing more."""
    from loraq import cli

    monkeypatch.setattr(cli, "configure_logging", lambda *args, **kwargs: None)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    args = ["provision", "joycaption", "--volume", str(tmp_path), "--endpoint", joycaption_hub.url]
    assert await asyncio.to_thread(cli.main, args) == 0  # the command runs its own loop
    assert (tmp_path / MODELS_DIR / "joycaption" / MARKER_FILE).is_file()
    downloads = joycaption_hub.file_gets(JOYCAPTION_REPO)

    ctx = _context(tmp_path, None, hf_endpoint=joycaption_hub.url)
    _images(ctx, ["a.png"])
    await caption.run(ctx)

    assert joycaption_hub.file_gets(JOYCAPTION_REPO) == downloads
    assert spy.batches == [1]
