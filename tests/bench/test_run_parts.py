"""The run's CPU-side parts: the machine check's words, the jobs it sends, the environment."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.acceptance import driver, matrix
from contracts.enums import ModelType
from contracts.request import JobRequest
from stages.pipeline import preflight
from stages.registry import spec_for

STACK = SimpleNamespace(endpoint="http://127.0.0.1:5000", bucket="loraq-local")
URLS = {"images": "http://127.0.0.1:5000/i.zip", "videos": "http://127.0.0.1:5000/v.zip"}


@pytest.mark.parametrize("model_type", list(ModelType))
@pytest.mark.parametrize("epochs", [matrix.EPOCHS, matrix.FAULT_EPOCHS])
def test_every_job_is_one_the_worker_accepts(model_type: ModelType, epochs: int) -> None:
    """GIVEN the run's job for a model type WHEN parsed and preflighted as the worker does
    THEN it is accepted: the right media for the model, a tiny resolution, few steps."""
    body = matrix.request_body(model_type, f"accept-{model_type.value}", URLS, STACK, epochs)

    request = JobRequest.model_validate(body)
    preflight(request.input)

    training = request.input.training
    assert training.resolution <= 256 and training.epochs == epochs
    assert (request.input.dataset.videos_url is not None) is spec_for(model_type).videos_only
    if epochs == matrix.FAULT_EPOCHS:
        assert training.extra_keys["checkpoint_every_n_epochs"] == 1


def test_model_types_are_selected_by_name() -> None:
    assert matrix.selected("") == list(ModelType)
    assert matrix.selected("flux, tiny") == [ModelType.FLUX, ModelType.TINY]
    with pytest.raises(ValueError):
        matrix.selected("flux2")


def test_a_deadline_shares_what_is_left() -> None:
    deadline = matrix.Deadline(100)
    assert 0 < deadline.share(0.5) <= 50
    assert matrix.Deadline(-5).left() == 0


def test_the_machine_check_names_every_missing_piece(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN a machine without a CUDA device and without the carried folder WHEN checked
    THEN each is a sentence saying what is missing and what to run, and nothing is raised."""
    monkeypatch.setattr(driver, "CARRIED", tmp_path / ".acceptance")
    monkeypatch.setattr(
        driver, "_torch_facts", lambda: {"torch": "2.11.0", "cuda_available": False}
    )
    monkeypatch.setattr(driver, "MIN_FREE_BYTES", 0)

    facts, problems = driver.check_machine(tmp_path / "work")

    assert facts["torch"] == "2.11.0"
    assert any("sees no CUDA device" in p for p in problems)
    assert sum("gpu_acceptance.py prepare" in p for p in problems) == 3


def test_a_run_without_the_carried_files_stops_with_a_results_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(driver, "CARRIED", tmp_path / ".acceptance")
    monkeypatch.setattr(driver, "_torch_facts", lambda: {"torch": None, "torch_error": "none"})
    args = argparse.Namespace(work=str(tmp_path / "w"), out=str(tmp_path / "out"), deadline_s=60)

    code = driver.main(args)

    assert code == 2
    written = (tmp_path / "out" / "acceptance.json").read_text()
    assert "no torch importable" in written


def test_every_process_of_the_run_gets_the_site_first_and_offline_switches(
    tmp_path: Path,
) -> None:
    env = driver.run_env(tmp_path)
    assert env["PYTHONPATH"].split(":")[:2] == [str(tmp_path / "site"), str(driver.REPO)]
    assert env["PATH"].startswith(str(tmp_path / "site" / "bin"))
    assert env["HF_HUB_OFFLINE"] == "1" and env["DS_ACCELERATOR"] == "cuda"
