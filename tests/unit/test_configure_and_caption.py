"""Config generation and caption rules, pure functions checked key by key."""

from __future__ import annotations

from pathlib import Path

import pytest
import toml

from contracts.request import JobRequest
from infra.volume import JobPaths
from stages.caption import normalise_caption, with_trigger
from stages.configure import build_configs, write_configs


def _request(model_type: str = "tiny", **training: object) -> JobRequest:
    return JobRequest.model_validate(
        {
            "input": {
                "model_type": model_type,
                "dataset": {
                    "type": "precaptioned",
                    "images_url": "https://x/y.zip",
                    "image_repeats": 3,
                },
                "training": {
                    "epochs": 4,
                    "batch_size": 2,
                    "gradient_accumulation_steps": 2,
                    **training,
                },
            }
        }
    )


def test_train_toml_maps_every_documented_field(tmp_path: Path) -> None:
    """GIVEN a request WHEN configured THEN diffusion-pipe's keys carry the request's values."""
    paths = JobPaths(tmp_path / "job")
    configs = build_configs(_request().input, paths, tmp_path / "models", {"images": 10})
    train = configs.train
    assert train["output_dir"] == str(paths.output)
    assert train["dataset"] == str(paths.config / "dataset.toml")
    assert (train["epochs"], train["micro_batch_size_per_gpu"]) == (4, 2)
    assert train["gradient_accumulation_steps"] == 2 and train["save_every_n_epochs"] == 10
    assert train["model"] == {"type": "tiny", "dtype": "float32"}
    assert train["adapter"] == {"type": "lora", "rank": 32, "dtype": "bfloat16"}
    assert train["optimizer"] == {
        "type": "adamw_optimi",
        "lr": 2e-5,
        "betas": [0.9, 0.99],
        "weight_decay": 0.01,
        "eps": 1e-8,
    }
    assert "alpha" not in train["adapter"]
    assert configs.dataset["directory"] == [
        {"path": str(paths.dataset / "images"), "num_repeats": 3}
    ]
    # tiny caps the resolution at its own size; images only, so one frame bucket.
    assert configs.dataset["resolutions"] == [32] and configs.dataset["frame_buckets"] == [1]
    # 10 images × 3 repeats = 30 items; ÷ (2 × 2) = 7 steps per epoch; × 4 epochs.
    assert configs.total_steps == 28


def test_pass_through_keys_land_where_diffusion_pipe_reads_them(tmp_path: Path) -> None:
    """GIVEN flat keys Flux reads in five tables WHEN configured THEN each lands in its table
    (contracts/data/upstream_keys.json), and a named table merges whole."""
    request = _request(
        "flux",
        shift=3.0,
        dropout=0.05,
        gradient_release=True,
        num_ar_buckets=9,
        blocks_to_swap=4,
        max_steps=5,
        model={"guidance": 3.5},
    )
    configs = build_configs(request.input, JobPaths(tmp_path), tmp_path, {"images": 10})
    assert configs.train["model"]["shift"] == 3.0
    assert configs.train["model"]["guidance"] == 3.5
    assert configs.train["adapter"]["dropout"] == 0.05
    assert configs.train["optimizer"]["gradient_release"] is True
    assert configs.dataset["num_ar_buckets"] == 9
    assert configs.train["blocks_to_swap"] == 4
    assert configs.total_steps == 5  # max_steps caps the total


def test_written_toml_reads_back(tmp_path: Path) -> None:
    """GIVEN configs WHEN written THEN both files parse back to the same tables."""
    configs = build_configs(_request().input, JobPaths(tmp_path), tmp_path, {"images": 2})
    write_configs(configs, tmp_path / "config")
    assert toml.load(tmp_path / "config" / "train.toml") == configs.train
    assert toml.load(tmp_path / "config" / "dataset.toml") == configs.dataset


@pytest.mark.parametrize(
    ("caption", "trigger", "expected"),
    [
        ("a red circle", "lqshape", "lqshape, a red circle"),
        ("lqshape, a red circle", "lqshape", "lqshape, a red circle"),
        ("", "lqshape", "lqshape"),
        ("  a\n red   circle ", None, "a red circle"),
        ("lqshapes everywhere", "lqshape", "lqshape, lqshapes everywhere"),
    ],
)
def test_trigger_is_prepended_exactly_once(
    caption: str, trigger: str | None, expected: str
) -> None:
    """GIVEN a caption WHEN the trigger rule runs (twice) THEN the trigger leads it once."""
    once = with_trigger(caption, trigger)
    assert once == expected
    assert with_trigger(once, trigger) == expected


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("a cat\r\non a mat", "a cat on a mat"),
        ("nul\x00esc\x1b[2Jend", "nul esc [2Jend"),
        ("line\u2028para\u2029end", "line para end"),
        ("bidi\u202eevil", "bidi evil"),
        ("Cafe\u0301", "Caf\u00e9"),  # NFC: e + combining acute becomes one character
        ("  tabs\tand   runs  ", "tabs and runs"),
    ],
)
def test_captions_are_one_line_of_nfc_text_without_controls(raw: str, clean: str) -> None:
    """GIVEN a caption holding CR/LF, NUL, ESC, separators, a bidi override or decomposed text
    WHEN normalised (every caption is, whatever wrote it) THEN one line of NFC text remains."""
    assert normalise_caption(raw) == clean
    assert with_trigger(raw, "ohwx") == f"ohwx, {clean}"
