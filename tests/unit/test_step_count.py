"""Total step counts against diffusion-pipe's rules, worked out by hand.

The arithmetic every case shares (utils/dataset.py at the pinned commit, loraq's dataset.toml):
- ARs: ``np.geomspace(0.5, 2.0, 7)`` rounded to 3 decimals = 0.5, 0.63, 0.794, 1.0, 1.26,
  1.587, 2.0. A 768×512 file (1.5) is nearest 1.587 in log space (|ln 1.5 − ln 1.587| = 0.057
  against 0.174 for 1.26); 512×1024 is exactly 0.5; 512×512 is 1.0.
- Size buckets at resolution 512 (w = √(512²·ar), h = 512²/w, each rounded to a multiple of 16):
  1.0 → 512×512; 1.587 → 645.0/406.4 → 640×400; 0.5 → 362.0/724.1 → 368×720.
- Each bucket gives ⌊items ÷ (micro batch × accumulation × GPUs)⌋ batches; one step each.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from contracts.enums import ErrorCode
from contracts.request import JobInput, JobRequest
from infra.volume import JobPaths
from stages import configure
from stages.configure import build_configs, measure_media
from stages.context import StageContext
from stages.dataset_scan import measure_directory
from stages.errors import Permanent
from stages.step_count import (
    Batching,
    MediaFile,
    Trainer,
    plan_dataset,
    predict_total_steps,
    unmeasured,
)
from tests.captioning.conftest import make_context
from tests.media import write_video

IMAGES = Path("/job/dataset/images")
VIDEOS = Path("/job/dataset/videos")


def _image(name: str, width: int, height: int, *, captioned: bool = True) -> MediaFile:
    return MediaFile(IMAGES, name, width, height, captioned=captioned)


def _video(name: str, width: int, height: int, frames: int, fps: float) -> MediaFile:
    return MediaFile(VIDEOS, name, width, height, video=True, frames=frames, fps=fps)


# 5 square, 3 wide (→ AR 1.587), 2 tall (→ AR 0.5): three buckets of 5, 3 and 2.
MIXED = (
    [_image(f"square{i}.png", 512, 512) for i in range(5)]
    + [_image(f"wide{i}.png", 768, 512) for i in range(3)]
    + [_image(f"tall{i}.png", 512, 1024) for i in range(2)]
)
# Resampled to Wan's 16 fps: 80 frames (→ bucket 33), 26 (fits only bucket 1: dropped),
# 40 (→ 33, AR 1.587) and 40 (→ 33): buckets (1.0, 33) of 2 videos and (1.587, 33) of 1.
CLIPS = [
    _video("long.mp4", 512, 512, frames=80, fps=16),
    _video("short.mp4", 512, 512, frames=50, fps=30),
    _video("wide.mp4", 768, 512, frames=60, fps=24),
    _video("slow.mp4", 512, 512, frames=20, fps=8),
]


def _dataset(image_repeats: int = 1, video_repeats: int = 5, **extra: object) -> dict[str, object]:
    return {
        "resolutions": [512],
        "enable_ar_bucket": True,
        "min_ar": 0.5,
        "max_ar": 2.0,
        "num_ar_buckets": 7,
        "frame_buckets": [1, 33],
        "directory": [
            {"path": str(IMAGES), "num_repeats": image_repeats},
            {"path": str(VIDEOS), "num_repeats": video_repeats},
        ],
        **extra,
    }


def _train(
    batch: object = 1, accumulation: int = 1, epochs: int = 10, **extra: object
) -> dict[str, object]:
    return {
        "micro_batch_size_per_gpu": batch,
        "gradient_accumulation_steps": accumulation,
        "epochs": epochs,
        **extra,
    }


def _total(
    media: list[MediaFile],
    dataset: dict[str, object],
    train: dict[str, object],
    *,
    num_gpus: int = 1,
    trainer: Trainer = Trainer.DIFFUSION_PIPE,
) -> int:
    return predict_total_steps(
        train, dataset, media, trainer=trainer, framerate=16, num_gpus=num_gpus
    )


def test_buckets_are_diffusion_pipes_size_buckets() -> None:
    """GIVEN square, wide and tall images WHEN planned at resolution 512
    THEN they land in the (ar, w, h, frames) buckets computed by hand above."""
    buckets = plan_dataset(_dataset(), MIXED, framerate=16)
    sizes = {key: len(items) for key, items in buckets.items()}
    assert sizes == {(1.0, 512, 512, 1): 5, (1.587, 640, 400, 1): 3, (0.5, 368, 720, 1): 2}


def test_each_bucket_rounds_down_on_its_own() -> None:
    """GIVEN 10 images in buckets of 5, 3 and 2, batch 1 × accumulation 2
    WHEN counted THEN ⌊5/2⌋ + ⌊3/2⌋ + ⌊2/2⌋ = 4 steps an epoch, 40 in 10 epochs
    (items ÷ batch would have said 5 and 50)."""
    assert _total(MIXED, _dataset(), _train(accumulation=2)) == 40


def test_repeats_multiply_each_bucket_before_rounding() -> None:
    """GIVEN image_repeats 3 WHEN counted with a global batch of 2
    THEN ⌊15/2⌋ + ⌊9/2⌋ + ⌊6/2⌋ = 7 + 4 + 3 = 14 an epoch (not 30/2 = 15)."""
    assert _total(MIXED, _dataset(image_repeats=3), _train(accumulation=2, epochs=1)) == 14


def test_accumulation_can_empty_small_buckets() -> None:
    """GIVEN batch 1 × accumulation 4 WHEN counted THEN only the square bucket fills a batch:
    ⌊5/4⌋ + ⌊3/4⌋ + ⌊2/4⌋ = 1 an epoch; batch 2 × 2 with repeats 3: ⌊15/4⌋+⌊9/4⌋+⌊6/4⌋ = 6."""
    assert _total(MIXED, _dataset(), _train(accumulation=4, epochs=1)) == 1
    repeated = _dataset(image_repeats=3)
    assert _total(MIXED, repeated, _train(batch=2, accumulation=2, epochs=1)) == 6


def test_videos_fill_frame_buckets_and_a_short_one_is_dropped() -> None:
    """GIVEN four videos (one only 26 frames at 16 fps) × video_repeats 5, a global batch of 2
    WHEN counted THEN buckets (1.0, 33) = 10 items and (1.587, 33) = 5: 5 + 2 = 7 an epoch;
    with the images beside them (other frame count, other buckets): 4 + 7 = 11."""
    assert _total(CLIPS, _dataset(), _train(accumulation=2, epochs=1)) == 7
    assert _total(MIXED + CLIPS, _dataset(), _train(accumulation=2, epochs=1)) == 11
    sizes = {k: len(v) for k, v in plan_dataset(_dataset(), CLIPS, framerate=16).items()}
    assert sizes == {(1.0, 512, 512, 33): 10, (1.587, 640, 400, 33): 5}


def test_a_bigger_frame_bucket_takes_long_videos() -> None:
    """GIVEN frame buckets [1, 33, 65] WHEN counted THEN the 80-frame video moves to bucket 65:
    (1.0, 33) = 5 items, (1.0, 65) = 5, (1.587, 33) = 5 → 2 + 2 + 2 = 6 with a batch of 2."""
    dataset = _dataset(frame_buckets=[1, 33, 65])
    assert _total(CLIPS, dataset, _train(accumulation=2, epochs=1)) == 6


def test_every_resolution_holds_every_item() -> None:
    """GIVEN resolutions [256, 512] WHEN counted THEN each square image is in (1.0, 256, 256)
    and (1.0, 512, 512): with a batch of 2, 2 + 2 + 1 + 1 + 1 + 1 = 8 an epoch."""
    dataset = _dataset(resolutions=[256, 512])
    assert _total(MIXED, dataset, _train(accumulation=2, epochs=1)) == 8


def test_max_steps_caps_the_run() -> None:
    """GIVEN 40 steps of epochs WHEN max_steps is 25 (or 0) THEN 25 (or the 1 step that runs
    before train.py's ``step >= max_steps`` check stops it)."""
    assert _total(MIXED, _dataset(), _train(accumulation=2, max_steps=25)) == 25
    assert _total(MIXED, _dataset(), _train(accumulation=2, max_steps=0)) == 1


def test_two_gpus_double_the_global_batch() -> None:
    """GIVEN batch 1 × accumulation 1 WHEN on 1 GPU THEN 5 + 3 + 2 = 10 an epoch; on 2 GPUs the
    global batch is 2: 2 + 1 + 1 = 4; 2 GPUs as 2 pipeline stages are one data-parallel rank."""
    assert _total(MIXED, _dataset(), _train(epochs=1)) == 10
    assert _total(MIXED, _dataset(), _train(epochs=1), num_gpus=2) == 4
    staged = _train(epochs=1, pipeline_stages=2)
    assert _total(MIXED, _dataset(), staged, num_gpus=2) == 10


def test_per_size_and_image_batch_sizes() -> None:
    """GIVEN micro batch [[256, 4], [512, 2]] and image_micro_batch_size_per_gpu 5
    WHEN counted THEN the 1-frame buckets use 5 (⌊5/5⌋ = 1, the others 0) and the 33-frame
    video buckets the size nearest √(w·h): 512 → 2 (⌊10/2⌋ + ⌊5/2⌋ = 7): 8 an epoch."""
    train = _train(batch=[[256, 4], [512, 2]], epochs=1, image_micro_batch_size_per_gpu=5)
    assert _total(MIXED + CLIPS, _dataset(), train) == 8


def test_uncaptioned_files_are_skipped_unless_told_otherwise() -> None:
    """GIVEN two of the square images without a caption file WHEN counted with batch 1
    THEN they are skipped (3 + 3 + 2 = 8); with skip_empty_caption = false they count (10)."""
    media = [
        _image(f.name, f.width or 0, f.height or 0, captioned=i >= 2) for i, f in enumerate(MIXED)
    ]
    assert _total(media, _dataset(), _train(epochs=1)) == 8
    assert _total(media, _dataset(skip_empty_caption=False), _train(epochs=1)) == 10


def test_no_ar_bucketing_puts_everything_in_one_bucket() -> None:
    """GIVEN enable_ar_bucket false WHEN counted with a batch of 2 THEN one bucket of 10: 5."""
    dataset = _dataset(enable_ar_bucket=False)
    assert _total(MIXED, dataset, _train(accumulation=2, epochs=1)) == 5


def test_a_dataset_too_small_for_a_batch() -> None:
    """GIVEN 2 images and a global batch of 4 WHEN counted THEN diffusion-pipe gets 0 steps
    (it refuses the dataset), the tiny trainer 1 an epoch (it wraps one batch): 3 in all."""
    two = MIXED[:2]
    assert _total(two, _dataset(), _train(accumulation=4, epochs=3)) == 0
    assert _total(two, _dataset(), _train(accumulation=4, epochs=3), trainer=Trainer.TINY) == 3


def test_an_unmeasured_file_falls_back_to_the_simple_estimate() -> None:
    """GIVEN one file whose size is unknown WHEN counted THEN ⌊11 × 1 / 2⌋ = 5 an epoch."""
    media = MIXED + unmeasured(IMAGES, 1)
    assert _total(media, _dataset(), _train(accumulation=2, epochs=1)) == 5


def test_tiny_batching_ignores_gpus_and_uses_the_first_micro_batch() -> None:
    """GIVEN the tiny trainer WHEN asked for a bucket's global batch THEN micro × accumulation,
    one process, whatever num_gpus says."""
    batching = Batching.for_trainer(Trainer.TINY, _train(batch=[[512, 3]], accumulation=2), 4)
    assert batching.global_batch((1.0, 512, 512, 1)) == 6 and batching.wrap_empty_epoch


def _job(model_type: str, clip_mode: str = "single_middle") -> JobInput:
    return JobInput.model_validate(
        {
            "model_type": model_type,
            "dataset": {
                "type": "precaptioned",
                "images_url": "https://x/i.zip",
                "videos_url": "https://x/v.zip",
                "video_repeats": 5,
            },
            "training": {
                "epochs": 10,
                "gradient_accumulation_steps": 2,
                "resolution": 512,
                "video_clip_mode": clip_mode,
            },
        }
    )


def test_configure_counts_the_same_clips_in_every_clip_mode(tmp_path: Path) -> None:
    """GIVEN Wan with the mixed images and videos WHEN configured with video_clip_mode
    single_middle or multiple THEN both give 11 an epoch, 110 in all: diffusion-pipe makes at
    most one clip per video at the pinned commit (extract_clips asserts it)."""
    paths = JobPaths(Path("/job"))
    media = MIXED + CLIPS
    single = build_configs(_job("wan13"), paths, tmp_path, media)
    multiple = build_configs(_job("wan13", "multiple"), paths, tmp_path, media)
    assert single.total_steps == multiple.total_steps == 110


def test_configure_uses_the_workers_gpu_count(tmp_path: Path) -> None:
    """GIVEN Flux and the 10 mixed images, batch 1 × accumulation 2 WHEN configured for 2 GPUs
    THEN the global batch is 4: ⌊5/4⌋ = 1 an epoch, 10 in all (1 GPU: 40)."""
    paths = JobPaths(Path("/job"))
    job = _job("flux")
    assert build_configs(job, paths, tmp_path, MIXED).total_steps == 40
    assert build_configs(job, paths, tmp_path, MIXED, num_gpus=2).total_steps == 10


def test_headers_are_measured_like_diffusion_pipe_reads_them(tmp_path: Path) -> None:
    """GIVEN a captioned PNG, an uncaptioned JPEG, a broken PNG, an MP4, an MKV and a WebM
    WHEN the folders are measured THEN sizes come from the headers, the broken file is left out
    (diffusion-pipe skips it too), and every container reports its 12 frames at 8 fps."""
    images, videos = tmp_path / "dataset" / "images", tmp_path / "dataset" / "videos"
    images.mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(images / "a.png")
    (images / "a.txt").write_text("a caption")
    Image.new("RGB", (20, 50)).save(images / "b.jpg")
    (images / "broken.png").write_bytes(b"not a png")
    for suffix in (".mp4", ".mkv", ".webm"):
        write_video(videos / f"clip{suffix}", frames=12, size=32)
    found = {f.name: f for f in measure_media(tmp_path / "dataset")}
    assert set(found) == {"a.png", "b.jpg", "clip.mp4", "clip.mkv", "clip.webm"}
    assert (found["a.png"].width, found["a.png"].height, found["a.png"].captioned) == (40, 30, True)
    assert (found["b.jpg"].width, found["b.jpg"].height, found["b.jpg"].captioned) == (
        20,
        50,
        False,
    )
    for name in ("clip.mp4", "clip.mkv", "clip.webm"):
        clip = found[name]
        assert clip.video and clip.measured
        assert (clip.width, clip.height, clip.frames, clip.fps) == (32, 32, 12, 8.0)
        assert clip.frames_at(16) == 24
    assert measure_directory(tmp_path / "absent") == []


@pytest.mark.parametrize("bad", [{"ar_buckets": "wide"}, {"resolutions": None}])
def test_a_malformed_bucket_key_keeps_the_simple_estimate(bad: dict[str, object]) -> None:
    """GIVEN a pass-through bucket key the planner cannot read WHEN counted
    THEN the simple estimate (10 ÷ 2 = 5 an epoch), not a crash; the trainer reports the key."""
    assert _total(MIXED, _dataset(**bad), _train(accumulation=2, epochs=1)) == 5


def _square_images(ctx: StageContext, count: int) -> None:
    folder = ctx.paths.dataset / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (64, 64)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text("a caption")


def _sdxl_context(volume: Path, **training: object) -> StageContext:
    body = {
        "model_type": "sdxl",
        "dataset": {"type": "precaptioned", "images_url": "https://x.test/d.zip"},
        "training": training,
        "output": {"method": "local"},
    }
    return make_context(volume, "http://127.0.0.1:9", JobRequest.model_validate({"input": body}))


async def test_the_configure_stage_refuses_a_dataset_that_fills_no_batch(tmp_path: Path) -> None:
    """GIVEN SDXL, three square images and the default accumulation of 4 WHEN the configure stage
    runs THEN a typed dataset_invalid on the accumulation field, before any TOML is written:
    diffusion-pipe would drop every bucket's remainder and fail only after caching latents.
    With an accumulation of 1 the same dataset trains 3 steps an epoch."""
    ctx = _sdxl_context(tmp_path)
    _square_images(ctx, 3)
    with pytest.raises(Permanent) as refused:
        await configure.run(ctx)
    assert refused.value.code is ErrorCode.DATASET_INVALID
    assert refused.value.field == "training.gradient_accumulation_steps"
    assert not (ctx.paths.config / "train.toml").exists()

    ctx = _sdxl_context(tmp_path, gradient_accumulation_steps=1)
    outcome = await configure.run(ctx)
    assert outcome.outputs["total_steps"] == 3 * 100  # 3 images, batch 1, 100 epochs
