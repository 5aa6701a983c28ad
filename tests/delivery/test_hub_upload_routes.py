"""The local Hub's upload routes answer the real huggingface_hub client as the Hub does."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from tests.delivery.conftest import BOB_TOKEN, READ_TOKEN, WRITE_TOKEN
from tests.hub_server import LocalHub


def _api(hub: LocalHub) -> HfApi:
    return HfApi(endpoint=hub.url, token=False)


def test_whoami_names_the_user_and_the_token_role(hub: LocalHub) -> None:
    """GIVEN a write and a read token WHEN whoami runs THEN it names alice and each role;
    an unknown token is refused."""
    api = _api(hub)
    me = api.whoami(token=WRITE_TOKEN)
    assert me["name"] == "alice" and me["auth"]["accessToken"]["role"] == "write"
    assert api.whoami(token=READ_TOKEN)["auth"]["accessToken"]["role"] == "read"
    with pytest.raises(HfHubHTTPError) as caught:
        api.whoami(token="hf_unknownToken000000000000")
    assert caught.value.response.status_code == 401


def test_create_repo_makes_a_private_repo_once(hub: LocalHub) -> None:
    """GIVEN a write token WHEN create_repo runs twice with exist_ok THEN one private repo
    exists, its URL is on the endpoint, and the second call was a 409 the client accepted."""
    api = _api(hub)
    url = api.create_repo("alice/lora", private=True, exist_ok=True, token=WRITE_TOKEN)
    again = api.create_repo("alice/lora", private=True, exist_ok=True, token=WRITE_TOKEN)
    assert str(url) == str(again) == f"{hub.url}/alice/lora"
    repo = hub.repo("alice/lora")
    assert repo is not None and repo.private
    creates = hub.requests(lambda r: r.path == "/api/repos/create")
    assert [r.status for r in creates] == [200, 409]
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info("alice/lora", token=BOB_TOKEN)  # private: hidden from bob


@pytest.mark.parametrize(
    ("token", "repo_id", "status"),
    [(READ_TOKEN, "alice/lora", 403), (BOB_TOKEN, "alice/lora", 403), ("hf_nope", "alice/x", 401)],
)
def test_create_repo_needs_a_write_token_for_the_namespace(
    hub: LocalHub, token: str, repo_id: str, status: int
) -> None:
    """GIVEN a read token, another user's write token or an unknown token WHEN create_repo runs
    THEN the Hub's status comes back and no repo appears."""
    with pytest.raises(HfHubHTTPError) as caught:
        _api(hub).create_repo(repo_id, exist_ok=True, token=token)
    assert caught.value.response.status_code == status
    assert hub.repo(repo_id) is None


def test_create_commit_uploads_files_and_skips_unchanged_ones(
    hub: LocalHub, tmp_path: Path
) -> None:
    """GIVEN a new repo WHEN files are committed, then committed again unchanged, then with
    one change THEN the first and last make commits, the unchanged one makes none, and the
    files download with hf_hub_download."""
    api = _api(hub)
    api.create_repo("alice/lora", exist_ok=True, token=WRITE_TOKEN)
    weights = tmp_path / "lora.safetensors"
    weights.write_bytes(b"\x00\x01weights" * 100)

    def commit(card: bytes) -> str:
        operations = [
            CommitOperationAdd("lora.safetensors", weights),
            CommitOperationAdd("README.md", card),
        ]
        info = api.create_commit(
            "alice/lora", operations, commit_message="Upload", token=WRITE_TOKEN
        )
        return str(info.oid)

    card = b"---\nbase_model: x\ntags: [lora]\n---\n# card\n"
    first = commit(card)
    same = commit(card)
    changed = commit(card + b"more\n")
    repo = hub.repo("alice/lora")
    assert repo is not None
    assert first == same != changed == repo.head
    assert len(hub.commit_requests("alice/lora")) == 2
    assert len(repo.commits) == 3  # the empty initial commit, then two
    got = hf_hub_download(
        "alice/lora", "lora.safetensors", endpoint=hub.url, token=False, local_dir=tmp_path / "dl"
    )
    assert Path(got).read_bytes() == weights.read_bytes()

    api.create_commit(
        "alice/lora",
        [CommitOperationDelete("README.md")],
        commit_message="Drop the card",
        token=WRITE_TOKEN,
    )
    assert sorted(repo.files) == ["lora.safetensors"]


def test_commit_without_the_write_role_is_forbidden(hub: LocalHub) -> None:
    """GIVEN alice's public repo WHEN her read token (or bob's write token) commits THEN the
    Hub's 403 comes back and the repo is unchanged."""
    api = _api(hub)
    api.create_repo("alice/lora", private=False, token=WRITE_TOKEN)
    head = hub.repo("alice/lora").head  # type: ignore[union-attr]
    for token in (READ_TOKEN, BOB_TOKEN):
        with pytest.raises(HfHubHTTPError) as caught:
            api.upload_file(
                path_or_fileobj=b"x", path_in_repo="a.txt", repo_id="alice/lora", token=token
            )
        assert caught.value.response.status_code == 403
    assert hub.repo("alice/lora").head == head  # type: ignore[union-attr]
    assert hub.commit_requests("alice/lora") == []


def test_a_card_whose_front_matter_is_not_yaml_is_refused(hub: LocalHub) -> None:
    """GIVEN a README.md with broken front matter WHEN committed THEN the client refuses it
    after the Hub's validate-yaml says why, and nothing is committed."""
    api = _api(hub)
    api.create_repo("alice/lora", token=WRITE_TOKEN)
    with pytest.raises(ValueError, match="Invalid metadata"):
        api.upload_file(
            path_or_fileobj=b"---\n: [unclosed\n---\nbody\n",
            path_in_repo="README.md",
            repo_id="alice/lora",
            token=WRITE_TOKEN,
        )
    assert hub.commit_requests("alice/lora") == []
