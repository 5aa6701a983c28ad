"""HubUploader against the local Hub: one commit per change, none for a re-run, typed errors."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download
from huggingface_hub.utils import validate_repo_id
from pydantic import SecretStr

from infra.hub import HubAccessDenied, HubUnavailable
from infra.hub_upload import HubInvalidRepo, HubUploader, default_repo_id
from tests.delivery.conftest import READ_TOKEN, WRITE_TOKEN
from tests.hub_server import LocalHub


@pytest.mark.parametrize(
    "job_id",
    ["job-1", "a--b..c", "x" * 128, "A." + "-" * 120 + "z", "ends.git", "9" + "_" * 127],
)
def test_default_repo_id_is_a_valid_stable_hub_name(job_id: str) -> None:
    """GIVEN any valid job id WHEN named THEN the repo id passes the Hub's own check, fits in 96
    characters, and the same job always gets the same name."""
    repo_id = default_repo_id("alice", job_id)
    validate_repo_id(repo_id)
    assert repo_id.startswith("alice/loraq-") and len(repo_id.split("/")[1]) <= 96
    assert not repo_id.endswith(".git")
    assert default_repo_id("alice", job_id) == repo_id


def test_default_repo_id_keeps_the_plain_name_and_tells_long_ids_apart() -> None:
    assert default_repo_id("alice", "job-1") == "alice/loraq-job-1"
    assert default_repo_id("alice", "x" * 127 + "a") != default_repo_id("alice", "x" * 127 + "b")


def test_commit_uploads_once_and_a_rerun_commits_nothing(hub: LocalHub, tmp_path: Path) -> None:
    """GIVEN a write token WHEN the same files are committed twice THEN the first call makes a
    commit, the second returns None without a commit request; a change commits again."""
    uploader = HubUploader(SecretStr(WRITE_TOKEN), hub.url)
    assert uploader.whoami() == "alice"
    url = uploader.ensure_repo("alice/lora", private=True)
    assert url == uploader.ensure_repo("alice/lora", private=True) == f"{hub.url}/alice/lora"
    weights = tmp_path / "adapter_model.safetensors"
    weights.write_bytes(bytes(range(256)) * 64)
    files: dict[str, bytes | Path] = {weights.name: weights, "notes.txt": b"hello"}

    first = uploader.commit("alice/lora", files, "upload")
    assert first is not None and first == hub.repo("alice/lora").head  # type: ignore[union-attr]
    assert uploader.commit("alice/lora", files, "upload") is None
    assert len(hub.commit_requests("alice/lora")) == 1

    second = uploader.commit("alice/lora", {**files, "notes.txt": b"changed"}, "upload")
    assert second not in (None, first)
    assert len(hub.commit_requests("alice/lora")) == 2

    got = hf_hub_download(
        "alice/lora", weights.name, endpoint=hub.url, token=WRITE_TOKEN, local_dir=tmp_path / "dl"
    )
    assert Path(got).read_bytes() == weights.read_bytes()
    link = uploader.file_url("alice/lora", "a b/notes.txt", download=True)
    assert link == f"{hub.url}/alice/lora/resolve/main/a%20b/notes.txt?download=true"


def test_a_read_token_cannot_create_or_commit(hub: LocalHub) -> None:
    """GIVEN alice's read-only token WHEN it creates a repo, or commits to her existing one THEN
    both are access denied and nothing changes."""
    reader = HubUploader(SecretStr(READ_TOKEN), hub.url)
    with pytest.raises(HubAccessDenied):
        reader.ensure_repo("alice/new", private=True)
    assert hub.repo("alice/new") is None

    HubUploader(SecretStr(WRITE_TOKEN), hub.url).ensure_repo("alice/lora", private=False)
    assert reader.ensure_repo("alice/lora", private=False) == f"{hub.url}/alice/lora"
    with pytest.raises(HubAccessDenied):
        reader.commit("alice/lora", {"a.txt": b"x"}, "upload")
    assert hub.commit_requests("alice/lora") == []


def test_an_invalid_repo_id_and_a_dead_endpoint_are_told_apart(hub: LocalHub) -> None:
    uploader = HubUploader(SecretStr(WRITE_TOKEN), hub.url)
    with pytest.raises(HubInvalidRepo):
        uploader.ensure_repo("alice/bad--name", private=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(HubUnavailable):
        HubUploader(SecretStr(WRITE_TOKEN), dead).whoami()


def test_the_token_never_reaches_error_messages(hub: LocalHub) -> None:
    with pytest.raises(HubAccessDenied) as denied:
        HubUploader(SecretStr(READ_TOKEN), hub.url).ensure_repo("alice/x", private=True)
    assert READ_TOKEN not in str(denied.value)
