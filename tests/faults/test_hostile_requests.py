"""Hostile requests against a real worker: one tenant cannot touch another's job.

A victim job trains and succeeds first; its public ``job.succeeded`` data names its run
directory. Then a corpus of requests (issue 10's findings: paths into the victim's run, deep
JSON, non-finite numbers, malformed URLs, control characters, a bucket the operator did not
list, a trickling server) goes to the same queue, followed by a valid job that uses backslashes
in a TOML string and a password in its URL. Each hostile job must end in exactly one typed
``job.failed`` naming its field; the victim's directory must be byte for byte unchanged; the
valid job must succeed with its strings intact and no secret anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from contracts.enums import EventType
from infra.local_stack import LocalStack
from infra.settings import Settings
from loraq.demo import demo_request, upload_dataset
from loraq.sample_data import image_dataset_zip
from tests.conftest import queue_depth, run_worker_until_terminal, send_job
from tests.secret_scan import find_secrets

pytestmark = pytest.mark.slow

PASSWORD = "Hunter2-url-PASS"  # the secret the scan looks for
RUN_NAME = 'C:\\x \\x41 \\u0041 quote"'
DATASET = image_dataset_zip(count=2)


class _Handler(BaseHTTPRequestHandler):
    """``/private.zip`` needs basic auth ``user:PASSWORD``; ``/trickle`` sends a byte at a time."""

    stop = threading.Event()

    def do_GET(self) -> None:
        if self.path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", str(10_000_000))
            self.end_headers()
            while not self.stop.wait(0.1):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
            return
        expected = "Basic " + base64.b64encode(f"user:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(DATASET)))
        self.end_headers()
        self.wfile.write(DATASET)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def origin() -> Iterator[str]:
    handler = type("Handler", (_Handler,), {"stop": threading.Event()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        handler.stop.set()
        server.shutdown()
        server.server_close()


def _settings(stack: LocalStack, volume: Path) -> Settings:
    return stack.worker_settings(
        volume,
        visibility_timeout=10,
        progress_interval_s=0,
        transient_retry_wait_s=0.05,
        retry_base_delay_s=1,
        download_min_rate_bytes_s=1024,
        download_rate_window_s=1.0,
    )


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "events.jsonl"  # the journal is appended by its own job
    }


def _corpus(stack: LocalStack, run_dir: str, origin: str) -> dict[str, tuple[Any, str, str]]:
    """job id → (body, expected code, expected field)."""
    url = upload_dataset(stack, count=2)
    other = "tenant-b-private"
    stack.client("s3").create_bucket(Bucket=other)
    stack.client("s3").put_object(Bucket=other, Key="secret.zip", Body=DATASET)

    def job(job_id: str, images_url: str = url, **training: Any) -> dict[str, Any]:
        return demo_request(images_url, stack, job_id=job_id, epochs=1, **training)

    def with_dataset(job_id: str, **dataset: Any) -> dict[str, Any]:
        body = job(job_id)
        body["input"]["dataset"].update(dataset)
        return body

    invalid, refused = "invalid_request", "dataset_download_failed"
    t = "input.training."
    return {
        "h-resume-victim": (
            job("h-resume-victim", resume_from_checkpoint=run_dir),
            invalid,
            t + "resume_from_checkpoint",
        ),
        "h-resume-relative": (
            job("h-resume-relative", resume_from_checkpoint="../../victim/output"),
            invalid,
            t + "resume_from_checkpoint",
        ),
        "h-init-existing": (
            job("h-init-existing", adapter={"init_from_existing": run_dir}),
            invalid,
            t + "adapter.init_from_existing",
        ),
        "h-eval-datasets": (
            job("h-eval-datasets", eval_datasets=[{"name": "e", "config": "/etc/passwd"}]),
            invalid,
            t + "eval_datasets",
        ),
        "h-output-dir": (job("h-output-dir", output_dir=run_dir), invalid, t + "output_dir"),
        "h-secret-key": (
            job("h-secret-key", monitoring={"hf_token": "hf_leakleakleak"}),
            invalid,
            t + "monitoring.hf_token",
        ),
        # 1e999 and NaN as json.loads reads them from the raw body
        "h-weight-decay": (
            json.dumps(job("h-weight-decay", optimizer_weight_decay=0.5)).replace("0.5", "1e999"),
            invalid,
            t + "optimizer_weight_decay",
        ),
        "h-betas-nan": (
            job("h-betas-nan", optimizer_betas=[float("nan"), float("nan")]),
            invalid,
            t + "optimizer_betas.0",
        ),
        "h-mixed-array": (job("h-mixed-array", mixed=[1, "a"]), invalid, t + "mixed"),
        "h-long-string": (job("h-long-string", note="a" * 300_000), invalid, t + "note"),
        "h-s3-no-key": (
            job("h-s3-no-key", images_url="s3://bucket"),
            invalid,
            "input.dataset.images_url",
        ),
        "h-ipv6": (
            job("h-ipv6", images_url="http://[::1/x.zip"),
            invalid,
            "input.dataset.images_url",
        ),
        "h-trigger": (
            with_dataset("h-trigger", trigger_word="ohwx\u0000\u001b[2J\r\u2028zz"),
            invalid,
            "input.dataset.trigger_word",
        ),
        "h-other-bucket": (
            job("h-other-bucket", images_url=f"s3://{other}/secret.zip"),
            refused,
            "input.dataset.images_url",
        ),
        "h-trickle": (
            job("h-trickle", images_url=f"http://{origin}/trickle"),
            refused,
            "input.dataset.images_url",
        ),
    }


async def test_hostile_requests_fail_typed_and_never_touch_another_job(
    stack: LocalStack, tmp_path: Path, origin: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """GIVEN a succeeded victim job, then 16 hostile requests (15 as jobs, one 10,000-deep body)
    and a valid job WHEN one worker runs them THEN each hostile one ends in exactly one
    non-retryable job.failed with its code and field, the victim's files are unchanged, the
    valid job succeeds with its TOML string intact, and neither URL password nor any other
    secret is found on the volume, in the logs or in the events."""
    volume = tmp_path / "volume"
    settings = _settings(stack, volume)
    send_job(stack, demo_request(upload_dataset(stack, count=2), stack, job_id="victim", epochs=2))
    events = await run_worker_until_terminal(stack, settings, {"victim"}, 240)
    succeeded = [e for e in events if e.subject == "victim" and e.type is EventType.JOB_SUCCEEDED]
    run_dir = str(Path(succeeded[0].data["output"]["network_volume_path"]).parent)
    victim = volume / "jobs" / "victim"
    before = _snapshot(victim)
    assert any("global_step" in name for name in before), "the victim left checkpoints to hit"

    corpus = _corpus(stack, run_dir, origin)
    for body, _, _ in corpus.values():
        send_job(stack, body)
    deep_id = send_job(stack, '{"input": ' + "[" * 10_000 + "]" * 10_000 + "}")
    valid = demo_request(
        f"http://user:{PASSWORD}@{origin}/private.zip",
        stack,
        job_id="valid",
        epochs=1,
        monitoring={"enable_wandb": False, "wandb_run_name": RUN_NAME},
    )
    send_job(stack, valid)
    events = await run_worker_until_terminal(stack, settings, {*corpus, deep_id, "valid"}, 300)

    for job_id, (_, code, field) in corpus.items():
        terminal = [e for e in events if e.subject == job_id and e.type.is_terminal]
        assert [e.type for e in terminal] == [EventType.JOB_FAILED], job_id
        data = terminal[0].data
        assert (data["code"], data["field"], data["retryable"]) == (code, field, False), job_id
    deep = [e for e in events if e.subject == deep_id and e.type.is_terminal]
    assert [(e.type, e.data["code"]) for e in deep] == [(EventType.JOB_FAILED, "invalid_json")]

    assert _snapshot(victim) == before
    outcome = [e for e in events if e.subject == "valid" and e.type.is_terminal]
    assert [e.type for e in outcome] == [EventType.JOB_SUCCEEDED]
    written = tomllib.loads((volume / "jobs" / "valid" / "config" / "train.toml").read_text())
    assert written["monitoring"]["wandb_run_name"] == RUN_NAME
    stored = (volume / "jobs" / "valid" / "request.json").read_text()
    assert f'"http://{origin}/private.zip"' in stored  # where it pointed, without user:PASS

    leaks = find_secrets(
        [PASSWORD, "hf_leakleakleak"],
        roots=[volume],
        logs="".join(capfd.readouterr()),
        events=events,
    )
    assert leaks == []
    assert queue_depth(stack, stack.queue_url) == 0
