"""The user's path with a real worker: `loraq submit`, then `loraq watch` in a terminal."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from contracts.request import JOB_ID_PATTERN
from infra.local_stack import LocalStack
from infra.volume import JobStore
from loraq.app import run_worker
from loraq.demo import demo_request, upload_dataset
from tests.cli.conftest import watch_queues, watch_subscriptions
from tests.cli.pty_process import REPO, PtyProcess, loraq_argv

pytestmark = pytest.mark.slow


async def test_submit_then_watch_a_real_tiny_job_to_its_download_link(
    stack: LocalStack, tmp_path: Path
) -> None:
    """GIVEN a worker running on the local stack and a tiny job's request without a job_id
    WHEN the user runs `JOB=$(loraq submit job.json)` and then `loraq watch $JOB --volume DIR`
    in a terminal
    THEN the watch shows training progress and ends with the result's download link, exit 0,
    leaving no queue or subscription of its own."""
    request = demo_request(upload_dataset(stack), stack, job_id="unused", epochs=4)
    del request["input"]["job_id"]
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(request))
    volume = tmp_path / "volume"
    JobStore(volume)  # the worker's volume, as the watch will find it
    settings = stack.worker_settings(volume, visibility_timeout=30, progress_interval_s=0)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop=stop))
    watch: PtyProcess | None = None
    try:
        submitted = await asyncio.to_thread(
            subprocess.run,
            loraq_argv("submit", str(job_file)),
            capture_output=True,
            text=True,
            cwd=REPO,
            env=dict(os.environ),
            timeout=60,
            check=True,
        )
        job_id = submitted.stdout.strip()
        assert re.match(JOB_ID_PATTERN, job_id)
        # The worker may already be running it: the journal replay covers what came before.
        watch = PtyProcess(loraq_argv("watch", job_id, "--volume", str(volume)), dict(os.environ))
        code = await asyncio.to_thread(watch.wait, 300)
    finally:
        stop.set()
        await worker
        if watch is not None:
            watch.close()

    screen = watch.text
    assert code == 0, screen
    result = JobStore(volume).load_result(job_id)
    assert result is not None and result.output.download_url
    assert f"download:    {result.output.download_url}\n" in screen
    assert re.search(r"train .* \d+\.\d% step \d+/32 loss \d\.\d{4}", screen)
    assert "100.0% step 32/32" in screen
    assert watch_queues(stack) == [] and watch_subscriptions(stack) == []
