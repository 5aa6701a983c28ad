"""The local Hub's upload routes answer the real huggingface_hub client as the Hub does."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
)
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils._runtime import is_xet_available

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


# -- large files through LFS ----------------------------------------------------------------
def _lfs_puts(hub: LocalHub, repo_id: str) -> list[int]:
    """The bytes each stored LFS object PUT carried."""
    return [r.bytes_received for r in hub.lfs_uploads(repo_id)]


def _commit_lines(hub: LocalHub, repo_id: str) -> list[tuple[tuple[str, str], ...]]:
    return [r.operations for r in hub.commit_requests(repo_id)]


def test_a_safetensors_upload_goes_through_lfs_and_downloads_back(
    hub: LocalHub, tmp_path: Path
) -> None:
    """GIVEN weights and a card WHEN committed THEN the weights go batch → PUT → verify and the
    commit names them as an lfsFile (the card inline); the tree lists their sha256, and they
    download byte-identical with the sha256 as ETag. No Xet call is made."""
    api = _api(hub)
    api.create_repo("alice/lora", token=WRITE_TOKEN)
    weights = tmp_path / "lora.safetensors"
    weights.write_bytes(b"{}" + bytes(range(256)) * 300)
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    api.create_commit(
        "alice/lora",
        [
            CommitOperationAdd("lora.safetensors", weights),
            CommitOperationAdd("README.md", b"---\ntags: [lora]\n---\n# card\n"),
        ],
        commit_message="Upload",
        token=WRITE_TOKEN,
    )

    assert len(hub.lfs_batches("alice/lora")) == 1
    assert _lfs_puts(hub, "alice/lora") == [weights.stat().st_size]
    verified = hub.requests(lambda r: r.path == "/alice/lora.git/info/lfs/objects/verify")
    assert [r.status for r in verified] == [200]
    assert _commit_lines(hub, "alice/lora") == [
        (("lfsFile", "lora.safetensors"), ("file", "README.md"))
    ]
    assert not hub.requests(lambda r: "xet" in r.path)
    repo = hub.repo("alice/lora")
    assert repo is not None and repo.lfs_paths == {"lora.safetensors"}
    (entry,) = [
        e for e in api.list_repo_tree("alice/lora", token=WRITE_TOKEN) if e.path == weights.name
    ]
    assert isinstance(entry, RepoFile) and entry.lfs is not None and entry.lfs.sha256 == sha
    meta = get_hf_file_metadata(
        hf_hub_url("alice/lora", "lora.safetensors", endpoint=hub.url), token=WRITE_TOKEN
    )
    assert meta.etag == sha and meta.size == weights.stat().st_size
    got = hf_hub_download(
        "alice/lora", weights.name, endpoint=hub.url, token=WRITE_TOKEN, local_dir=tmp_path / "dl"
    )
    assert Path(got).read_bytes() == weights.read_bytes()


def test_an_identical_upload_puts_nothing(hub: LocalHub) -> None:
    """GIVEN weights already uploaded WHEN the same bytes are committed again, at the same path
    and at another THEN each time the batch answers without an upload action, so no PUT: the
    first makes no commit (preupload's sha256 oid matches), the second commits a pointer to the
    stored object."""
    api = _api(hub)
    api.create_repo("alice/lora", token=WRITE_TOKEN)
    data = b"\x00weights" * 1000

    def upload(path: str) -> None:
        api.upload_file(
            path_or_fileobj=data, path_in_repo=path, repo_id="alice/lora", token=WRITE_TOKEN
        )

    upload("lora.safetensors")
    upload("lora.safetensors")
    upload("epoch1/lora.safetensors")
    assert len(hub.lfs_batches("alice/lora")) == 3
    assert _lfs_puts(hub, "alice/lora") == [len(data)]  # the first upload's only
    assert _commit_lines(hub, "alice/lora") == [
        (("lfsFile", "lora.safetensors"),),
        (("lfsFile", "epoch1/lora.safetensors"),),
    ]
    repo = hub.repo("alice/lora")
    assert repo is not None and repo.files["epoch1/lora.safetensors"] == data


@pytest.mark.parametrize(
    ("path", "data", "key"),
    [
        ("adapter.bin", b"text, but a .bin", "lfsFile"),
        ("model.pt", b"text, but a .pt", "lfsFile"),
        ("UPDATES/loss.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "lfsFile"),
        ("data.dat", b"no suffix rule, but a NUL \x00 byte", "lfsFile"),
        ("log.txt", b"plain text over the threshold " * 40, "lfsFile"),
        ("notes.txt", b"plain text under the threshold", "file"),
        ("empty.safetensors", b"", "file"),  # the client commits empty files inline
    ],
)
def test_preupload_sends_binary_and_large_files_to_lfs(path: str, data: bytes, key: str) -> None:
    """GIVEN a Hub whose size threshold is 1 KiB WHEN a file is uploaded THEN it travels as the
    Hub would have it: by suffix, binary sample or size through LFS, else inline."""
    hub = LocalHub(lfs_threshold=1024).start()
    try:
        hub.add_token(WRITE_TOKEN, "alice", write=True)
        api = _api(hub)
        api.create_repo("alice/files", token=WRITE_TOKEN)
        api.upload_file(
            path_or_fileobj=data, path_in_repo=path, repo_id="alice/files", token=WRITE_TOKEN
        )
        assert _commit_lines(hub, "alice/files") == [((key, path),)]
        assert _lfs_puts(hub, "alice/files") == ([len(data)] if key == "lfsFile" else [])
        repo = hub.repo("alice/files")
        assert repo is not None and repo.files[path] == data
    finally:
        hub.stop()


def _post(url: str, payload: bytes, token: str | None, content_type: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=payload, method="POST")
    request.add_header("Content-Type", content_type)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _put(url: str, payload: bytes) -> int:
    request = urllib.request.Request(url, data=payload, method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _commit_raw(hub: LocalHub, repo_id: str, *lines: dict[str, Any]) -> tuple[int, Any]:
    header = {"key": "header", "value": {"summary": "raw", "description": ""}}
    body = b"\n".join(json.dumps(line).encode() for line in (header, *lines))
    url = f"{hub.url}/api/models/{repo_id}/commit/main"
    return _post(url, body, WRITE_TOKEN, "application/x-ndjson")


def test_a_commit_naming_an_lfs_object_never_uploaded_is_refused(hub: LocalHub) -> None:
    """GIVEN no upload WHEN a commit names an LFS oid THEN the Hub's 400 comes back and nothing
    is committed; a file preupload would send to LFS, sent inline, is refused too."""
    _api(hub).create_repo("alice/lora", token=WRITE_TOKEN)
    head = hub.repo("alice/lora").head  # type: ignore[union-attr]
    oid = hashlib.sha256(b"never uploaded").hexdigest()
    lfs = {"path": "lora.safetensors", "algo": "sha256", "oid": oid, "size": 14}
    status, body = _commit_raw(hub, "alice/lora", {"key": "lfsFile", "value": lfs})
    assert status == 400 and "LFS pointer pointed to a file that does not exist" in body["error"]
    inline = {"path": "lora.safetensors", "content": "AAEC", "encoding": "base64"}
    status, body = _commit_raw(hub, "alice/lora", {"key": "file", "value": inline})
    assert status == 400 and "must go through LFS" in body["error"]
    assert hub.repo("alice/lora").head == head  # type: ignore[union-attr]


def test_the_upload_url_takes_only_the_announced_bytes(hub: LocalHub) -> None:
    """GIVEN a batch answer WHEN its upload URL gets other bytes, or is used without its
    signature THEN storage refuses (400, 403) and verify says the object is missing; the
    announced bytes are stored, verified, and a second batch offers no upload."""
    _api(hub).create_repo("alice/lora", token=WRITE_TOKEN)
    data = b"\x00" * 100
    oid = hashlib.sha256(data).hexdigest()
    batch_url = f"{hub.url}/alice/lora.git/info/lfs/objects/batch"
    request = {
        "operation": "upload",
        "transfers": ["basic", "multipart"],
        "objects": [{"oid": oid, "size": len(data)}, {"oid": "nope", "size": 1}],
        "hash_algo": "sha256",
        "ref": {"name": "main"},
    }
    status, answer = _post(
        batch_url, json.dumps(request).encode(), WRITE_TOKEN, "application/vnd.git-lfs+json"
    )
    assert status == 200 and answer["transfer"] == "basic"
    wanted, invalid = answer["objects"]
    assert invalid["error"]["code"] == 422
    upload, verify = wanted["actions"]["upload"]["href"], wanted["actions"]["verify"]["href"]
    verify_body = json.dumps({"oid": oid, "size": len(data)}).encode()

    assert _put(upload, b"\x01" * 100) == 400
    assert _put(upload.split("?")[0], data) == 403
    assert _post(verify, verify_body, WRITE_TOKEN, "application/json")[0] == 404
    assert _put(upload, data) == 200
    assert _post(verify, verify_body, WRITE_TOKEN, "application/json")[0] == 200

    status, again = _post(
        batch_url, json.dumps(request).encode(), WRITE_TOKEN, "application/vnd.git-lfs+json"
    )
    assert status == 200 and "actions" not in again["objects"][0]
    assert _post(batch_url, json.dumps(request).encode(), READ_TOKEN, "application/json")[0] == 403


def test_the_client_takes_lfs_not_xet_while_a_local_hub_runs() -> None:
    """GIVEN hf_xet installed (the client would then upload through Xet) WHEN a LocalHub runs
    THEN the client's Xet is off, as HF_HUB_DISABLE_XET=1 sets it; it is back after the stop."""
    assert importlib.util.find_spec("hf_xet") is not None
    before = huggingface_hub.constants.HF_HUB_DISABLE_XET
    hub = LocalHub().start()
    try:
        assert not is_xet_available()
    finally:
        hub.stop()
    assert before == huggingface_hub.constants.HF_HUB_DISABLE_XET
