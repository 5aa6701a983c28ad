"""``loraq config`` as a dry run: what a worker would refuse, it refuses, with the same field.

Against the local Hub (tests/hub_server.py, the real huggingface_hub client) and a local dataset
server on 127.0.0.1, with the worker's settings taken from ``LORAQ_*`` variables as
``loraq worker`` takes them.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from contracts.request import JobRequest
from infra.hub import HubClient
from infra.volume import JobPaths
from loraq.cli import main
from stages.configure import build_configs
from stages.errors import Permanent
from stages.provision import provision_model
from stages.registry import spec_for
from tests import hub_repos
from tests.hub_server import LocalHub

GRANTED = "dry-run-test-token-granted"
UNGRANTED = "dry-run-test-token-not-granted"
ZIP = b"PK\x05\x06" + bytes(18)  # an empty zip's end record: the probe reads one byte of it


class _Datasets(BaseHTTPRequestHandler):
    """``/i.zip``: ranges answered 206 as S3 does; ``/moved``: a redirect to it; else 404."""

    protocol_version = "HTTP/1.1"
    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/i.zip")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path != "/i.zip":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206)
        self.send_header("Content-Range", f"bytes 0-0/{len(ZIP)}")
        self.send_header("Content-Length", "1")
        self.end_headers()
        self.wfile.write(ZIP[:1])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def datasets() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (_Datasets,), {"requests": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    """The local Hub as the worker's endpoint, and a worker environment with nothing else set."""
    local = LocalHub().start()
    for repo in hub_repos.all_repos():
        local.add_repo(repo)
    local.add_token(GRANTED, "alice", grant=(hub_repos.FLUX,))
    local.add_token(UNGRANTED, "bob")
    for name in ("LORAQ_GPU_MEMORY_GIB", "LORAQ_CAPTION_IMAGE_BACKEND", "LORAQ_QUEUE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LORAQ_HF_ENDPOINT", local.url)
    monkeypatch.setenv("LORAQ_FETCH_ALLOW", '["127.0.0.1"]')
    try:
        yield local
    finally:
        local.stop()


def _job(tmp_path: Path, images_url: str, model_type: str = "flux", **extra: Any) -> Path:
    body = {
        "input": {
            "model_type": model_type,
            "dataset": {"type": "images", "images_url": images_url},
            "output": {"method": "local"},
            **extra,
        }
    }
    path = tmp_path / "job.json"
    path.write_text(json.dumps(body))
    return path


def _run(tmp_path: Path, job: Path, *args: str) -> int:
    argv = ["config", str(job), "--out", str(tmp_path / "out"), "--volume", str(tmp_path / "v")]
    return main([*argv, *args])


def test_a_gated_model_without_a_token_is_refused_as_the_worker_refuses_it(
    tmp_path: Path, hub: LocalHub, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN a Flux job with no Hugging Face token and a volume without Flux WHEN dry-run THEN
    it exits 1 with the provision stage's own refusal (field and message, from the same code),
    asks the Hub nothing, and writes nothing."""
    code = _run(tmp_path, _job(tmp_path, "https://x.test/i.zip"))
    err = capsys.readouterr().err
    with pytest.raises(Permanent) as worker:
        spec = spec_for(JobRequest.model_validate(_body("flux")).input.model_type)
        asyncio.run(provision_model(spec, tmp_path / "w" / "flux", HubClient(hub.url), None))
    assert code == 1
    assert err == f"{worker.value.field}: {worker.value.message}\n"
    assert err.startswith("input.api_keys.huggingface_token: Flux weights: this model is gated")
    assert hub.requests() == [] and not (tmp_path / "out").exists()


def _body(model_type: str) -> dict[str, Any]:
    images = {"type": "images", "images_url": "https://x.test/i.zip"}
    return {"input": {"model_type": model_type, "dataset": images}}


def test_the_token_is_held_against_the_gated_repo_by_the_hub(
    tmp_path: Path,
    hub: LocalHub,
    datasets: tuple[str, list[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """GIVEN a token the Hub has not granted Flux WHEN dry-run THEN exit 1 on the token's field,
    the token never printed; GIVEN a granted one THEN it passes, after the Hub's auth-check."""
    base, _ = datasets
    refused = _job(tmp_path, f"{base}/i.zip", api_keys={"huggingface_token": UNGRANTED})
    assert _run(tmp_path, refused) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("input.api_keys.huggingface_token: Flux weights: the token")
    assert UNGRANTED not in captured.err + captured.out

    granted = _job(tmp_path, f"{base}/i.zip", api_keys={"huggingface_token": GRANTED})
    assert _run(tmp_path, granted) == 0
    assert "weights: the token may download Flux" in capsys.readouterr().out
    checks = hub.requests(lambda r: r.path.endswith("/auth-check"))
    assert [(r.status, r.token) for r in checks] == [(403, UNGRANTED), (200, GRANTED)]


def test_weights_already_on_the_volume_need_no_token(
    tmp_path: Path, hub: LocalHub, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN a volume provisioned with Flux WHEN a job without a token is dry-run THEN it passes,
    as the worker would: provisioning finds the weights and asks for nothing."""
    spec = spec_for(JobRequest.model_validate(_body("flux")).input.model_type)
    token = JobRequest.model_validate(
        {"input": {**_body("flux")["input"], "api_keys": {"huggingface_token": GRANTED}}}
    ).input.huggingface_token()
    asyncio.run(
        provision_model(spec, tmp_path / "v" / "models" / "flux", HubClient(hub.url), token)
    )
    assert _run(tmp_path, _job(tmp_path, "https://x.test/i.zip"), "--offline") == 0
    assert "weights: Flux is on the volume, no token needed" in capsys.readouterr().out


def test_dataset_urls_are_probed_under_the_downloads_own_rules(
    tmp_path: Path,
    hub: LocalHub,
    datasets: tuple[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """GIVEN dataset URLs WHEN dry-run THEN a reachable one (redirects followed) passes with its
    size, a 404 is refused on its field, one over LORAQ_MAX_DOWNLOAD_BYTES is refused as the
    download would refuse it, and a private address without LORAQ_FETCH_ALLOW is never
    connected to."""
    base, seen = datasets
    assert _run(tmp_path, _job(tmp_path, f"{base}/moved", "sdxl")) == 0
    assert "input.dataset.images_url: reachable, 0.0 MB" in capsys.readouterr().out
    assert seen == ["/moved", "/i.zip"]

    assert _run(tmp_path, _job(tmp_path, f"{base}/gone.zip", "sdxl")) == 1
    assert capsys.readouterr().err == "input.dataset.images_url: server answered 404\n"

    monkeypatch.setenv("LORAQ_MAX_DOWNLOAD_BYTES", "10")
    assert _run(tmp_path, _job(tmp_path, f"{base}/i.zip", "sdxl")) == 1
    assert "input.dataset.images_url: 22 bytes is over the 10-byte limit" in capsys.readouterr().err

    monkeypatch.delenv("LORAQ_FETCH_ALLOW")
    seen.clear()
    assert _run(tmp_path, _job(tmp_path, f"{base}/i.zip", "sdxl")) == 1
    assert "non-public address" in capsys.readouterr().err and seen == []


def test_the_workers_caption_backend_decides(
    tmp_path: Path,
    hub: LocalHub,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """GIVEN a worker captioning images with Gemini (LORAQ_CAPTION_IMAGE_BACKEND) WHEN an images
    job without a Gemini key is dry-run THEN it is refused on that key, as the worker would."""
    job = _job(tmp_path, "https://x.test/i.zip", "sdxl")
    assert _run(tmp_path, job, "--offline") == 0
    capsys.readouterr()
    monkeypatch.setenv("LORAQ_CAPTION_IMAGE_BACKEND", "gemini")
    assert _run(tmp_path, job, "--offline") == 1
    assert capsys.readouterr().err.startswith("input.api_keys.gemini_api_key: ")


def test_a_job_the_gpu_cannot_hold_is_refused_naming_the_knobs(
    tmp_path: Path,
    hub: LocalHub,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """GIVEN LORAQ_GPU_MEMORY_GIB=16 and Flux at 1024 WHEN dry-run THEN exit 1, out_of_memory's
    message on input.training.resolution with the knobs; GIVEN --gpu-memory-gib 80 THEN the
    memory passes and the cost is reported."""
    monkeypatch.setenv("LORAQ_GPU_MEMORY_GIB", "16")
    job = _job(tmp_path, "https://x.test/i.zip", api_keys={"huggingface_token": GRANTED})
    assert _run(tmp_path, job, "--offline") == 1
    err = capsys.readouterr().err
    assert err.startswith("input.training.resolution: Flux needs about ")
    assert "training.blocks_to_swap (now 0, at most 34)" in err

    assert _run(tmp_path, job, "--offline", "--gpu-memory-gib", "80") == 0
    out = capsys.readouterr().out
    assert "this worker's GPU has 80.0 GiB (--gpu-memory-gib)" in out
    assert "steps: unknown until the dataset's file counts are given" in out


def test_the_predicted_steps_are_the_configure_stages_and_time_is_rough(
    tmp_path: Path, hub: LocalHub, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN the dataset's image count WHEN dry-run THEN the steps are build_configs' own count
    for it, and the time is stated per step on the reference GPU, as rough."""
    job = _job(tmp_path, "https://x.test/i.zip", "sdxl", training={"epochs": 5})
    assert _run(tmp_path, job, "--offline", "--images", "40") == 0
    out = capsys.readouterr().out
    request = JobRequest.model_validate(json.loads(job.read_text())).input
    expected = build_configs(request, JobPaths(tmp_path), tmp_path, {"images": 40}).total_steps
    assert f"steps: {expected:,} " in out and expected == 5 * 10
    assert "s a step on an H100" in out and "rough" in out


def test_a_bad_worker_setting_is_named(
    tmp_path: Path,
    hub: LocalHub,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """GIVEN LORAQ_GPU_MEMORY_GIB=-1 WHEN dry-run THEN exit 1 naming the variable, as the worker
    would refuse to start."""
    monkeypatch.setenv("LORAQ_GPU_MEMORY_GIB", "-1")
    assert _run(tmp_path, _job(tmp_path, "https://x.test/i.zip", "sdxl"), "--offline") == 1
    assert capsys.readouterr().err.startswith("LORAQ_GPU_MEMORY_GIB: ")
