"""The pre-launch memory check: upstream's own 24 GB statements hold, the knobs move the need,
and a job that cannot fit is refused in preflight by the worker before any stage."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from contracts.enums import ErrorCode, StageName, StageStatus
from contracts.request import JobInput, JobRequest
from infra.volume import JobPaths
from stages import configure, model_budget
from stages.errors import Permanent
from stages.model_budget import Estimate
from stages.pipeline import preflight, run_stages
from tests.captioning.conftest import make_context

# An RTX 4090, upstream's "24GB" card: 24564 MiB.
GIB_24GB_CARD = 24564 / 1024
VIDEOS = {"type": "videos", "videos_url": "https://x.test/v.zip"}
IMAGES = {"type": "images", "images_url": "https://x.test/i.zip"}


def _job(model_type: str, dataset: dict[str, Any] | None = None, **training: Any) -> JobInput:
    body = {
        "model_type": model_type,
        "dataset": dataset or IMAGES,
        "training": training,
        "output": {"method": "local"},
        "api_keys": {"gemini_api_key": "AIzaBudgetTestKey"},
    }
    return JobRequest.model_validate({"input": body}).input


def _need(request: JobInput) -> Estimate:
    configs = configure.build_configs(request, JobPaths(Path("/j")), Path("/m"), media={})
    need = model_budget.estimate(
        request.model_type,
        configs.train,
        configs.dataset,
        videos=model_budget.has_videos(request),
    )
    assert need is not None
    return need


def test_upstreams_wan_14b_min_vram_example_fits_its_24gb_card() -> None:
    """GIVEN examples/wan_14b_min_vram.toml's settings (512x512x81, blocks_to_swap 32, fp8,
    line 1: "with 24GB VRAM") WHEN held against a 24 GB card THEN it is not refused."""
    request = _job(
        "wan14b_t2v",
        VIDEOS,
        resolution=512,
        frame_buckets=[1, 81],
        blocks_to_swap=32,
        gradient_accumulation_steps=1,
    )
    preflight(request, gpu_memory_gib=GIB_24GB_CARD)
    assert _need(request).bucket == model_budget.Bucket(512, 81, 1)


def test_qwen_on_24gb_needs_block_swapping_as_upstream_says() -> None:
    """GIVEN Qwen-Image at 640 on a 24 GB card (docs/supported_models.md 387-391: "You will need
    block swapping"; the 24GB example swaps 8) WHEN checked THEN it fits with 8 blocks swapped
    and is refused without, as out_of_memory, naming blocks_to_swap among the knobs."""
    preflight(_job("qwen", resolution=640, blocks_to_swap=8), gpu_memory_gib=GIB_24GB_CARD)
    with pytest.raises(Permanent) as refused:
        preflight(_job("qwen", resolution=640), gpu_memory_gib=GIB_24GB_CARD)
    assert refused.value.code is ErrorCode.OUT_OF_MEMORY
    assert refused.value.field == "input.training.resolution"
    assert "training.blocks_to_swap (now 0, at most 58)" in refused.value.message


def test_a_refusal_names_the_field_and_every_knob_that_helps() -> None:
    """GIVEN Flux in bf16 at 1024 with batch 4 on a 16 GiB GPU WHEN checked THEN it is refused
    on the weights (they alone do not fit: blocks_to_swap is the field) and the message names
    resolution, batch size, LoRA rank, block swapping and fp8 with their values."""
    request = _job("flux", batch_size=4, transformer_dtype="bfloat16")
    with pytest.raises(Permanent) as refused:
        model_budget.check(request, 16.0)
    message = refused.value.message
    assert refused.value.field == "input.training.blocks_to_swap"
    assert message.startswith("Flux needs about ") and "more than this worker's 16.0 GiB" in message
    for knob in (
        "training.resolution (now 1024)",
        "training.batch_size (now 4)",
        "training.lora_rank (now 32)",
        "training.blocks_to_swap (now 0, at most 34)",
        "training.transformer_dtype to 'float8'",
    ):
        assert knob in message
    assert "frame_buckets" not in message  # Flux takes no video


def test_video_frames_are_the_field_when_a_video_bucket_is_the_peak() -> None:
    """GIVEN Wan 14B with 81-frame buckets at 1024 on a 48 GiB GPU WHEN checked THEN the
    refusal names input.training.frame_buckets, the knob that made it too big."""
    with pytest.raises(Permanent) as refused:
        model_budget.check(_job("wan14b_t2v", VIDEOS, resolution=1024, frame_buckets=[1, 81]), 48)
    assert refused.value.field == "input.training.frame_buckets"
    assert "training.frame_buckets (now [1, 81])" in refused.value.message


def test_each_knob_lowers_the_need() -> None:
    """GIVEN Wan 14B's defaults WHEN one knob at a time moves THEN the estimate goes down, and
    block swapping costs time as upstream warns (examples/main_example.toml lines 37-40)."""
    base = _need(_job("wan14b_t2v", VIDEOS, batch_size=2))
    for lower in (
        _job("wan14b_t2v", VIDEOS, batch_size=1),
        _job("wan14b_t2v", VIDEOS, batch_size=2, resolution=384),
        _job("wan14b_t2v", VIDEOS, batch_size=2, frame_buckets=[1, 17]),
        _job("wan14b_t2v", VIDEOS, batch_size=2, lora_rank=8),
        _job("wan14b_t2v", VIDEOS, batch_size=2, blocks_to_swap=20),
    ):
        assert _need(lower).total_gib < base.total_gib
    swapped = _need(_job("wan14b_t2v", VIDEOS, batch_size=2, blocks_to_swap=20))
    assert swapped.seconds_per_step > base.seconds_per_step
    bf16 = _need(_job("wan14b_t2v", VIDEOS, batch_size=2, transformer_dtype="bfloat16"))
    assert bf16.weights_gib == pytest.approx(2 * base.weights_gib)


def test_pass_through_dataset_keys_count_where_the_trainer_reads_them() -> None:
    """GIVEN ``resolutions`` passed through to dataset.toml WHEN estimated THEN its largest side
    is the peak, not training.resolution."""
    assert _need(_job("flux", resolutions=[512, 1536])).bucket.side == 1536


def test_images_only_datasets_never_count_frame_buckets() -> None:
    """GIVEN Wan on images with the default frame_buckets [1, 33] WHEN estimated THEN the peak is
    one frame: diffusion-pipe never puts an image in a video bucket."""
    assert _need(_job("wan13", IMAGES)).bucket.frames == 1


def test_more_blocks_to_swap_than_upstream_allows_is_refused_on_any_gpu() -> None:
    """GIVEN blocks_to_swap above a model's limit (wan/wan.py 390-392: at most blocks - 2)
    WHEN preflight runs with the GPU unknown THEN it is refused with its field; the limit
    itself passes."""
    with pytest.raises(Permanent) as too_many:
        preflight(_job("wan13", blocks_to_swap=29))
    assert too_many.value.code is ErrorCode.INVALID_REQUEST
    assert too_many.value.field == "input.training.blocks_to_swap"
    assert "at most 28" in too_many.value.message
    preflight(_job("wan13", blocks_to_swap=28))
    with pytest.raises(Permanent, match="at most 34"):
        preflight(_job("flux", blocks_to_swap=35))


@pytest.mark.parametrize("gpu", [None, 0.0])
def test_an_unknown_gpu_or_a_zero_setting_refuses_nothing(gpu: float | None) -> None:
    """GIVEN a job far too big for any GPU WHEN the GPU is unknown (None) or the operator set 0
    THEN preflight does not refuse it on memory."""
    preflight(
        _job("wan14b_t2v", VIDEOS, resolution=2048, frame_buckets=[1, 129]), gpu_memory_gib=gpu
    )


def test_tiny_needs_no_gpu() -> None:
    """GIVEN the built-in CPU trainer WHEN checked against a 1 GiB "GPU" THEN nothing is refused
    and there is no estimate."""
    request = _job("tiny")
    model_budget.check(request, 1.0)
    configs = configure.build_configs(request, JobPaths(Path("/j")), Path("/m"), media={})
    assert (
        model_budget.estimate(request.model_type, configs.train, configs.dataset, videos=False)
        is None
    )


def test_time_grows_with_the_work_of_a_step() -> None:
    """GIVEN Flux WHEN gradient accumulation or resolution grows THEN a step takes longer, and
    the reference step (1024 px, batch 1, no accumulation) is of the order of a second."""
    one = _need(_job("flux", gradient_accumulation_steps=1)).seconds_per_step
    assert 0.3 < one < 5
    four = _need(_job("flux", gradient_accumulation_steps=4)).seconds_per_step
    assert four == pytest.approx(4 * one)
    assert _need(_job("flux", gradient_accumulation_steps=1, resolution=512)).seconds_per_step < one


def _fake_smi(folder: Path, answer: str) -> Path:
    """An ``nvidia-smi`` that records its arguments and answers like the real one."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(f'#!/bin/sh\necho "$@" > "{folder}/args"\nprintf "{answer}"\n')
    script.chmod(0o755)
    return folder


def test_the_gpu_memory_comes_from_the_driver_smallest_visible_gpu_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN a host with two GPUs and CUDA_VISIBLE_DEVICES WHEN detected THEN the smaller one
    counts (every rank holds a whole model), only the visible GPUs are asked, and an operator's
    setting wins over the driver."""
    bin_dir = _fake_smi(tmp_path / "bin", "81559\\n24564\\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert model_budget.gpu_memory_gib(None) == pytest.approx(GIB_24GB_CARD)
    assert "-i 0,1" in (bin_dir / "args").read_text()
    assert model_budget.gpu_memory_gib(40.0) == 40.0


def test_no_driver_means_an_unknown_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN no nvidia-smi, or one that answers nonsense WHEN detected THEN the GPU is unknown."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert model_budget.detected_gpu_memory_gib() is None
    monkeypatch.setenv("PATH", str(_fake_smi(tmp_path / "bin", "No devices were found\\n")))
    assert model_budget.detected_gpu_memory_gib() is None


async def test_the_worker_refuses_a_job_its_gpu_cannot_hold_before_any_stage(
    tmp_path: Path,
) -> None:
    """GIVEN a worker whose GPU has 16 GiB (LORAQ_GPU_MEMORY_GIB) and a Flux job at 1024 WHEN
    the pipeline runs THEN it is refused with out_of_memory before any stage starts (nothing is
    downloaded); once the ledger says training completed, the GPU no longer matters."""
    request = JobRequest.model_validate(
        {"input": {"model_type": "flux", "dataset": IMAGES, "output": {"method": "local"}}}
    )
    ctx = make_context(tmp_path, "http://127.0.0.1:9", request, gpu_memory_gib=16.0)
    started: list[StageName] = []

    async def hook(name: StageName, body: Callable[[], Awaitable[None]]) -> None:
        started.append(name)

    with pytest.raises(Permanent) as refused:
        await run_stages(ctx, lambda ledger: None, hook)
    assert refused.value.code is ErrorCode.OUT_OF_MEMORY and started == []
    for stage in StageName:
        ctx.ledger.stage(stage).status = StageStatus.COMPLETED
    await run_stages(ctx, lambda ledger: None, hook)
    assert started == []
