"""The local Hub speaks the protocol the real huggingface_hub client expects, unchanged."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests import hub_repos
from tests.hub_server import LocalHub
from tests.models.conftest import TOKEN


def test_repo_info_and_tree_describe_the_head_commit(local_hub: LocalHub) -> None:
    """GIVEN a repo WHEN the client asks for its info and tree THEN it gets the head commit,
    every file with its size, LFS details for weights, and the gated flag."""
    api = HfApi(endpoint=local_hub.url, token=False)
    repo = hub_repos.flux()
    info = api.repo_info(hub_repos.FLUX)
    assert info.sha == repo.head and info.gated == "manual"
    assert sorted(s.rfilename for s in info.siblings or []) == sorted(repo.files)
    files = {
        f.path: f for f in api.list_repo_tree(hub_repos.FLUX, recursive=True) if hasattr(f, "size")
    }
    assert {p: f.size for p, f in files.items()} == {p: len(d) for p, d in repo.files.items()}
    lfs = files["vae/diffusion_pytorch_model.safetensors"].lfs
    assert lfs is not None and lfs.size == len(
        repo.files["vae/diffusion_pytorch_model.safetensors"]
    )
    top = [f.path for f in api.list_repo_tree(hub_repos.FLUX, path_in_repo="tokenizer")]
    assert top == [p for p in sorted(repo.files) if p.startswith("tokenizer/")]


def test_hf_hub_download_fetches_a_file_into_a_local_dir(
    local_hub: LocalHub, tmp_path: Path
) -> None:
    """GIVEN an open repo WHEN hf_hub_download runs with local_dir THEN the file lands with its
    path, after a HEAD that carried the commit and ETag."""
    path = hf_hub_download(
        hub_repos.WAN13,
        "google/umt5-xxl/tokenizer.json",
        local_dir=tmp_path,
        endpoint=local_hub.url,
        token=False,
    )
    assert Path(path) == tmp_path / "google/umt5-xxl/tokenizer.json"
    assert Path(path).read_bytes() == hub_repos.wan13().files["google/umt5-xxl/tokenizer.json"]
    assert [r.method for r in local_hub.requests()] == ["HEAD", "GET"]


@pytest.mark.parametrize(
    ("repo_id", "filename", "revision", "error"),
    [
        ("nobody/nothing", "config.json", None, RepositoryNotFoundError),
        (hub_repos.WAN13, "missing.json", None, EntryNotFoundError),
        (hub_repos.WAN13, "config.json", "0" * 40, RevisionNotFoundError),
        (hub_repos.FLUX, "model_index.json", None, GatedRepoError),
    ],
)
def test_errors_reach_the_client_as_its_own_exceptions(
    local_hub: LocalHub,
    tmp_path: Path,
    repo_id: str,
    filename: str,
    revision: str | None,
    error: type[Exception],
) -> None:
    """GIVEN a missing repo, file or revision, or a gated repo without a token WHEN downloaded
    THEN huggingface_hub raises the exception the real Hub's X-Error-Code maps to."""
    with pytest.raises(error):
        hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            local_dir=tmp_path,
            endpoint=local_hub.url,
            token=False,
        )


def test_a_granted_token_opens_the_gated_repo(local_hub: LocalHub, tmp_path: Path) -> None:
    """GIVEN Flux and a token with access WHEN downloaded THEN the bearer token opens it."""
    path = hf_hub_download(
        hub_repos.FLUX, "model_index.json", local_dir=tmp_path, endpoint=local_hub.url, token=TOKEN
    )
    assert Path(path).read_bytes() == hub_repos.flux().files["model_index.json"]


def test_ranges_are_served_as_partial_content(local_hub: LocalHub) -> None:
    """GIVEN a Range request WHEN served THEN 206 with the exact bytes and Content-Range."""
    repo = hub_repos.sdxl()
    data = repo.files["sd_xl_base_1.0.safetensors"]
    url = f"{local_hub.url}/{hub_repos.SDXL}/resolve/main/sd_xl_base_1.0.safetensors"
    request = urllib.request.Request(url, headers={"Range": "bytes=10-"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 206
        assert reply.headers["Content-Range"] == f"bytes 10-{len(data) - 1}/{len(data)}"
        assert reply.headers["X-Repo-Commit"] == repo.head
        assert reply.read() == data[10:]


def test_a_new_commit_changes_what_main_resolves_to(local_hub: LocalHub) -> None:
    """GIVEN a repo that gets a commit WHEN asked again THEN main names the new commit and the
    old one is no longer served (the model later upload routes will build on)."""
    repo = local_hub.state.repo("model", hub_repos.SDXL)
    assert repo is not None
    old = repo.head
    new = repo.commit({"notes.txt": b"hello", "README.md": None})
    api = HfApi(endpoint=local_hub.url, token=False)
    info = api.repo_info(hub_repos.SDXL)
    assert info.sha == new != old
    assert "notes.txt" in {s.rfilename for s in info.siblings or []}
    assert "README.md" not in {s.rfilename for s in info.siblings or []}
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(hub_repos.SDXL, revision=old)
