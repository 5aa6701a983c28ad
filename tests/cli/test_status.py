"""``loraq status``: from the volume's journal, and from the Hub's ``UPDATES/status.json``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.status import fold_events
from infra.volume import JobStore
from loraq.cli import main
from tests.cli.conftest import failed, progress, start_events, succeeded
from tests.hub_server import HubRepo, LocalHub

URL = "http://127.0.0.1:9/loraq-local/loras/job-1/job-1.zip?X-Amz-Signature=77aa"
TOKEN = "hf_statusTestTokenForAlice0123456789"


def test_a_running_job_from_the_volume_human_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GIVEN job-1's journal up to step 8 of 32 WHEN `loraq status job-1 --volume DIR`
    THEN it prints stage, percent, step, loss and ETA; --json prints the folded view."""
    events = [*start_events("job-1"), progress("job-1", 8, loss=0.75)]
    store = JobStore(tmp_path)
    for event in events:
        store.append_event(event)

    assert main(["status", "job-1", "--volume", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "status:   running" in lines and "stage:    train" in lines
    assert "progress: 25.0%  step 8/32  epoch 2" in lines
    assert "loss:     0.7500" in lines and "eta:      24s" in lines

    assert main(["status", "job-1", "--volume", str(tmp_path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == fold_events("job-1", events).model_dump(mode="json")


def test_finished_jobs_show_the_link_or_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = JobStore(tmp_path)
    for event in [*start_events("ok"), succeeded("ok", URL)]:
        store.append_event(event)
    for event in [*start_events("bad")[:2], failed("bad")]:
        store.append_event(event)

    assert main(["status", "ok", "--volume", str(tmp_path)]) == 0
    assert f"  download:    {URL}" in capsys.readouterr().out.splitlines()
    assert main(["status", "bad", "--volume", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "status:   failed" in out and "field:    input.dataset.images_url" in out


def test_an_unknown_job_or_a_wrong_volume_is_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    JobStore(tmp_path)
    assert main(["status", "nobody", "--volume", str(tmp_path)]) == 1
    assert "no events for job nobody" in capsys.readouterr().err
    assert main(["status", "nobody", "--volume", str(tmp_path / "typo")]) == 1
    assert not (tmp_path / "typo").exists()


@pytest.fixture
def hub() -> Iterator[LocalHub]:
    local = LocalHub().start()
    local.add_token(TOKEN, "alice")
    try:
        yield local
    finally:
        local.stop()


def test_status_from_the_hub_updates_file(
    hub: LocalHub, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN alice's private repo whose UPDATES/status.json holds job-1's status
    WHEN `loraq status job-1 --repo alice/lora-job-1` with HF_TOKEN and the local Hub's endpoint
    THEN it prints that status; without the token it says the repo cannot be read (exit 1)."""
    view = fold_events("job-1", [*start_events("job-1"), succeeded("job-1", URL)])
    hub.add_repo(
        HubRepo(
            "alice/lora-job-1",
            files={"UPDATES/status.json": view.model_dump_json().encode()},
            private=True,
        )
    )
    args = ["status", "job-1", "--repo", "alice/lora-job-1", "--hf-endpoint", hub.url]
    monkeypatch.setenv("HF_TOKEN", TOKEN)

    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == view.model_dump(mode="json")
    assert main(args) == 0
    assert f"  download:    {URL}" in capsys.readouterr().out.splitlines()
    assert main(["status", "job-2", *args[2:]]) == 1
    assert "reports job job-1, not job-2" in capsys.readouterr().err

    monkeypatch.delenv("HF_TOKEN")
    assert main(args) == 1
    assert "private and HF_TOKEN does not grant it" in capsys.readouterr().err
