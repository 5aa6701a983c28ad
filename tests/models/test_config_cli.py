"""``loraq config``: a job's TOML files without a GPU; ``--offline``, without the network either.

The dry run's network checks (Hub access, dataset URLs) are in tests/cli/test_config_dry_run.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import toml

from loraq.cli import main

FIXTURES = Path(__file__).parent.parent / "fixtures" / "requests"


def _job_file(tmp_path: Path, body: dict[str, Any]) -> Path:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(body))
    return path


def _body(**changes: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "model_type": "wan13",
        "job_id": "check-1",
        "dataset": {
            "type": "both",
            "images_url": "https://x.test/i.zip",
            "videos_url": "https://x.test/v.zip",
        },
        "training": {"epochs": 3, "min_t": 0.2},
        "output": {"method": "s3", "s3": {"bucket": "loras"}},
        "api_keys": {"gemini_api_key": "AIzaConfigCliTestKey"},  # its videos need captions
    }
    request.update(changes)
    return {"input": request}


def test_a_valid_job_writes_both_files_with_paths_under_the_volume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN a valid Wan job WHEN ``loraq config`` runs THEN train.toml and dataset.toml are
    written, pointing into the given volume, and nothing is created in the volume itself."""
    volume = tmp_path / "volume"
    out = tmp_path / "out"
    code = main(
        [
            "config",
            str(_job_file(tmp_path, _body())),
            "--out",
            str(out),
            "--volume",
            str(volume),
            "--offline",
        ]
    )

    assert code == 0
    train = toml.load(out / "train.toml")
    dataset = toml.load(out / "dataset.toml")
    assert train["dataset"] == str(volume / "jobs" / "check-1" / "config" / "dataset.toml")
    assert train["output_dir"] == str(volume / "jobs" / "check-1" / "output")
    assert train["model"]["ckpt_path"] == str(volume / "models" / "wan13" / "Wan2.1-T2V-1.3B")
    assert (train["epochs"], train["model"]["min_t"]) == (3, 0.2)
    assert [d["path"] for d in dataset["directory"]] == [
        str(volume / "jobs" / "check-1" / "dataset" / "images"),
        str(volume / "jobs" / "check-1" / "dataset" / "videos"),
    ]
    assert not volume.exists()
    assert str(out / "train.toml") in capsys.readouterr().out


def test_a_job_without_an_id_gets_a_placeholder_directory(tmp_path: Path) -> None:
    """GIVEN no job_id (a worker would use the SQS MessageId) THEN the paths say so plainly."""
    body = _body()
    del body["input"]["job_id"]
    assert (
        main(
            [
                *("config", str(_job_file(tmp_path, body)), "--out", str(tmp_path)),
                *("--volume", "/v", "--offline"),
            ]
        )
        == 0
    )
    assert toml.load(tmp_path / "train.toml")["output_dir"] == "/v/jobs/JOB_ID/output"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"training": {"alpha": 16}},
            "input.training.alpha: diffusion-pipe forces alpha = rank",
        ),
        (
            {"training": {"learning_rate": 5}},
            "input.training.learning_rate: Input should be less than or equal to 1",
        ),
        ({"dataset": {"type": "videos"}}, "input.dataset: Value error, videos_url is required"),
        (
            # Without min_t, a key Flux does not read (refused at parse time, before this rule).
            {"model_type": "flux", "training": {"epochs": 3}},
            "input.dataset.videos_url: Flux trains on images only",
        ),
        ({"model_type": "wan14b_i2v"}, "input.dataset.type: Wan 14B I2V trains on videos only"),
        ({"model_type": "gan"}, "input.model_type: Input should be"),
        (
            {"training": {"frame_buckets": [1]}},
            "input.training.frame_buckets: videos need a frame bucket",
        ),
    ],
)
def test_an_invalid_job_exits_non_zero_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict[str, Any], expected: str
) -> None:
    """GIVEN a job the worker would refuse WHEN ``loraq config`` runs THEN it exits 1, prints
    the field and the reason, and writes nothing."""
    out = tmp_path / "out"
    code = main(["config", str(_job_file(tmp_path, _body(**changes))), "--out", str(out)])
    assert code == 1
    assert expected in capsys.readouterr().err
    assert not out.exists()


def test_secrets_in_a_refused_job_are_not_echoed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN an invalid job carrying a token in a wrongly typed field WHEN refused THEN the
    token is not in the output (pydantic's messages can echo input values)."""
    secret = "hf_SecretTokenThatMustNotAppear12345"
    body = _body(api_keys={"huggingface_token": secret, "unknown": secret})
    assert main(["config", str(_job_file(tmp_path, body)), "--out", str(tmp_path / "o")]) == 1
    captured = capsys.readouterr()
    assert "input.api_keys.unknown" in captured.err
    assert secret not in captured.err + captured.out


def test_the_seed_requests_configure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """GIVEN the seed's example requests WHEN configured THEN each writes its files or is
    refused for its output method alone (publish methods this worker does not offer yet)."""
    written = 0
    for fixture in sorted(FIXTURES.glob("*.json")):
        out = tmp_path / fixture.stem
        code = main(
            [
                "config",
                str(fixture),
                "--out",
                str(out),
                "--volume",
                str(tmp_path / "v"),
                "--offline",
            ]
        )
        err = capsys.readouterr().err
        if code == 0:
            written += 1
            assert (out / "train.toml").is_file() and (out / "dataset.toml").is_file()
        else:
            assert err.startswith("input.output.method: ") and err.count("\n") == 1, err
    assert written >= 1


def test_the_installed_command_runs(tmp_path: Path) -> None:
    """GIVEN the real command line WHEN run as a process THEN it writes the files (exit 0)."""
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loraq.cli",
            "config",
            str(_job_file(tmp_path, _body())),
            "--out",
            str(out),
            "--offline",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert toml.load(out / "train.toml")["model"]["type"] == "wan"
