"""Provisioning against the local Hub: the real huggingface_hub client, real HTTP, real files."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from huggingface_hub import snapshot_download
from pydantic import SecretStr

from contracts.enums import ErrorCode, ModelType
from infra.hub import HubClient
from stages import weights_lock
from stages.errors import Interrupted, Permanent, Retryable
from stages.provision import TOKEN_FIELD, Provisioned, provision_model
from stages.registry import MODELS, spec_for
from tests import hub_repos
from tests.hub_server import LocalHub
from tests.models.conftest import TOKEN, UNGRANTED_TOKEN

REAL_TYPES = [t for t in ModelType if not MODELS[t].builtin]
# Files each real repo has but a loader never reads: they must stay on the Hub.
NOT_DOWNLOADED = {
    ModelType.FLUX: ["flux1-dev.safetensors", "ae.safetensors", "README.md", "dev_grid.jpg"],
    ModelType.SDXL: ["sd_xl_base_1.0_0.9vae.safetensors", "unet/config.json", "README.md"],
    ModelType.WAN13: ["assets/logo.png", "examples/i2v_input.JPG", "README.md"],
    ModelType.WAN14B_T2V: ["assets/logo.png", "LICENSE.txt"],
    ModelType.WAN14B_I2V: ["assets/video_dit_arch.jpg", "configuration.json"],
    ModelType.QWEN: ["tokenizer/vocab.json", "README.md"],
    ModelType.Z_IMAGE_TURBO: ["README.md"],
}


async def _provision(
    hub_url: str | None,
    volume: Path,
    model_type: ModelType,
    token: str | None = TOKEN,
    **options: object,
) -> Provisioned:
    spec = spec_for(model_type)
    return await provision_model(
        spec,
        volume / "models" / model_type.value,
        HubClient(hub_url),
        SecretStr(token) if token else None,
        poll_s=0.02,
        retry_wait_s=0.0,
        **options,  # type: ignore[arg-type]
    )


def _table_paths(value: object) -> list[str]:
    if isinstance(value, str):
        return [value] if value.startswith("/") else []
    if isinstance(value, dict):
        return [p for item in value.values() for p in _table_paths(item)]
    if isinstance(value, list):
        return [p for item in value for p in _table_paths(item)]
    return []


@pytest.mark.parametrize("model_type", REAL_TYPES, ids=str)
async def test_each_model_lands_where_its_model_table_points(
    local_hub: LocalHub, tmp_path: Path, model_type: ModelType
) -> None:
    """GIVEN the Hub with the real repo layouts WHEN a type is provisioned THEN every path in
    its [model] table exists, unread files stay on the Hub, and the marker lists every file
    with its size."""
    result = await _provision(local_hub.url, tmp_path, model_type)

    models_dir = tmp_path / "models" / model_type.value
    assert (result.how, result.models_dir) == ("downloaded", models_dir)
    spec = spec_for(model_type)
    table_paths = _table_paths(spec.model_table_for(models_dir))
    assert table_paths and all(Path(p).exists() for p in table_paths)
    marker = json.loads((models_dir / ".complete").read_text())
    repos = {repo.repo_id: repo for repo in hub_repos.all_repos()}
    for source, record in zip(spec.sources, marker["sources"], strict=True):
        repo = repos[source.repo_id]
        assert record["commit"] == repo.head
        for path, size in record["files"].items():
            assert (models_dir / source.subdir / path).read_bytes() == repo.files[path]
            assert size == len(repo.files[path])
    first = spec.sources[0]
    for unread in NOT_DOWNLOADED[model_type]:
        assert not (models_dir / first.subdir / unread).exists(), unread


async def test_a_ready_volume_is_used_with_the_hub_gone(
    local_hub: LocalHub, tmp_path: Path
) -> None:
    """GIVEN a provisioned volume WHEN the Hub is down and a job provisions again THEN the
    marker makes it ready at once, without a token."""
    await _provision(local_hub.url, tmp_path, ModelType.FLUX)
    local_hub.stop()
    result = await _provision("http://127.0.0.1:9", tmp_path, ModelType.FLUX, token=None)
    assert result.how == "marker"


def _copy_by_hand(volume: Path, model_type: ModelType) -> Path:
    """What an operator's rsync or ``hf download`` leaves: the files, no marker, no metadata."""
    repos = {repo.repo_id: repo for repo in hub_repos.all_repos()}
    models_dir = volume / "models" / model_type.value
    for source in spec_for(model_type).sources:
        for path, data in repos[source.repo_id].files.items():
            target = models_dir / source.subdir / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return models_dir


async def test_a_pre_provisioned_volume_is_used_without_network(
    local_hub: LocalHub, tmp_path: Path
) -> None:
    """GIVEN weights copied by hand (no marker), the Hub cache filled as ``hf download
    --cache-dir`` does, and no reachable Hub WHEN provisioned THEN the loader's files are found
    and used, even for a gated model without a token."""
    for model_type in REAL_TYPES:
        _copy_by_hand(tmp_path, model_type)
        for repo in spec_for(model_type).hub_cache:
            snapshot_download(
                repo.repo_id,
                cache_dir=tmp_path / "models" / "hf-cache",
                allow_patterns=list(repo.allow_patterns),
                endpoint=local_hub.url,
                token=False,
            )
    local_hub.stop()
    for model_type in REAL_TYPES:
        result = await _provision("http://127.0.0.1:9", tmp_path, model_type, token=None)
        assert result.how == "preprovisioned", model_type


async def test_a_pre_provisioned_volume_missing_a_shard_needs_the_hub(tmp_path: Path) -> None:
    """GIVEN a hand-copied Wan 14B without one shard the index names WHEN the Hub is
    unreachable THEN provisioning fails as retryable (it is not mistaken for complete)."""
    models_dir = _copy_by_hand(tmp_path, ModelType.WAN14B_T2V)
    (models_dir / "Wan2.1-T2V-14B" / "diffusion_pytorch_model-00004-of-00006.safetensors").unlink()
    with pytest.raises(Retryable) as failed:
        await _provision("http://127.0.0.1:9", tmp_path, ModelType.WAN14B_T2V)
    assert failed.value.code is ErrorCode.PROVISION_FAILED


async def test_another_variant_in_the_folder_is_refused(tmp_path: Path) -> None:
    """GIVEN the I2V folder holding a T2V checkpoint (its config.json says so) WHEN provisioned
    THEN it fails for good, saying which variant it found: diffusion-pipe would train the wrong
    model."""
    models_dir = _copy_by_hand(tmp_path, ModelType.WAN14B_I2V)
    config = models_dir / "Wan2.1-I2V-14B-480P" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_type": "t2v"}))
    with pytest.raises(Permanent) as refused:
        await _provision(None, tmp_path, ModelType.WAN14B_I2V)
    assert "model_type is 't2v', expected 'i2v'" in refused.value.message
    assert refused.value.field == "model_type"


async def test_a_gated_model_without_a_token_fails_before_any_download(
    local_hub: LocalHub, tmp_path: Path
) -> None:
    """GIVEN Flux (gated) and no token WHEN provisioned THEN it fails for good on the token
    field, and not one file was requested."""
    with pytest.raises(Permanent) as refused:
        await _provision(local_hub.url, tmp_path, ModelType.FLUX, token=None)
    assert refused.value.code is ErrorCode.PROVISION_FAILED
    assert refused.value.field == TOKEN_FIELD == "input.api_keys.huggingface_token"
    assert local_hub.file_gets(hub_repos.FLUX) == []


async def test_a_gated_repo_refuses_a_missing_token_at_the_hub_too(
    local_hub: LocalHub, tmp_path: Path
) -> None:
    """GIVEN the Hub's own gate (the registry not consulted: a client asking without a token)
    WHEN the files are requested THEN the Hub answers 401 GatedRepo and the client maps it to
    access denied."""
    from infra.hub import HubAccessDenied

    hub = HubClient(local_hub.url)
    snapshot = hub.snapshot(hub_repos.FLUX, "main", None)
    assert snapshot.gated
    with pytest.raises(HubAccessDenied):
        hub.download(snapshot, tmp_path / "flux", ("vae/*",), None, lambda: False)
    assert local_hub.file_gets(hub_repos.FLUX) == []
    assert {r.status for r in local_hub.requests(lambda r: r.method == "HEAD")} == {401}


async def test_a_token_without_access_is_refused_and_never_stored(
    local_hub: LocalHub, tmp_path: Path
) -> None:
    """GIVEN a valid token that was not granted Flux WHEN provisioned THEN the Hub's 403 becomes
    a permanent failure on the token field, and the token appears in no message or file."""
    with pytest.raises(Permanent) as refused:
        await _provision(local_hub.url, tmp_path, ModelType.FLUX, token=UNGRANTED_TOKEN)
    assert refused.value.field == TOKEN_FIELD
    assert "refused" in refused.value.message
    assert UNGRANTED_TOKEN not in refused.value.message
    assert not _files_containing(tmp_path, UNGRANTED_TOKEN)


async def test_a_granted_token_is_sent_but_never_written(
    local_hub: LocalHub, tmp_path: Path
) -> None:
    """GIVEN a token with access WHEN Flux is provisioned THEN every file request carried it,
    and no file on the volume (markers, huggingface_hub's metadata) contains it."""
    result = await _provision(local_hub.url, tmp_path, ModelType.FLUX, token=TOKEN)
    assert result.how == "downloaded"
    gets = local_hub.file_gets(hub_repos.FLUX)
    assert gets and all(r.token == TOKEN for r in gets)
    assert not _files_containing(tmp_path, TOKEN)
    home_token = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "token"
    assert not (home_token.exists() and TOKEN in home_token.read_text())


def _files_containing(root: Path, text: str) -> list[Path]:
    needle = text.encode()
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


async def test_an_interrupted_download_resumes_where_it_stopped(
    local_hub: LocalHub, tmp_path: Path
) -> None:
    """GIVEN the Hub drops the connection 11 MiB into Wan's 12 MiB transformer WHEN provisioning
    THEN the client asks only for the rest, from the last whole 10 MiB chunk it kept, and the
    file is complete."""
    repo_id, path = hub_repos.BIG_FILE
    full = hub_repos.wan13().files[path]
    cut = 11 * 1024 * 1024
    local_hub.cut_next_download(repo_id, path, after_bytes=cut)

    result = await _provision(local_hub.url, tmp_path, ModelType.WAN13)

    first, retry = local_hub.file_gets(repo_id, path)
    assert (first.range_start, first.bytes_sent) == (0, cut)
    assert retry.range_start == 10 * 1024 * 1024 and retry.status == 206
    assert retry.range_start + retry.bytes_sent == len(full)
    assert retry.bytes_sent < len(full)
    assert (result.models_dir / "Wan2.1-T2V-1.3B" / path).read_bytes() == full


async def test_two_provisions_at_once_download_once(local_hub: LocalHub, tmp_path: Path) -> None:
    """GIVEN two jobs of the same model starting together in one worker WHEN both provision THEN
    one downloads while the other waits for the lock, finds the marker, and every file was
    requested exactly once."""
    with local_hub.downloads_held():
        first = asyncio.create_task(_provision(local_hub.url, tmp_path, ModelType.WAN14B_T2V))
        second = asyncio.create_task(_provision(local_hub.url, tmp_path, ModelType.WAN14B_T2V))
        assert await asyncio.to_thread(local_hub.state.download_arrived.wait, 10)
    results = await asyncio.gather(first, second)

    assert sorted(r.how for r in results) == ["downloaded", "marker"]
    paths = [g.path for g in local_hub.file_gets(hub_repos.WAN14_T2V)]
    assert paths and len(paths) == len(set(paths))


async def test_a_second_process_waits_for_the_first_download(
    local_hub: LocalHub, tmp_path: Path
) -> None:
    """GIVEN a download in progress here WHEN ``loraq provision`` runs in another process on the
    same volume THEN it waits on the lock file and then finds the weights ready: each file was
    requested once."""
    with local_hub.downloads_held():
        here = asyncio.create_task(_provision(local_hub.url, tmp_path, ModelType.WAN13))
        assert await asyncio.to_thread(local_hub.state.download_arrived.wait, 10)
        other = subprocess.Popen(
            [sys.executable, "-m", "loraq.cli", "provision", "wan13", "--volume", str(tmp_path),
             "--endpoint", local_hub.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "HF_TOKEN": ""},
        )  # fmt: skip
        assert other.stdout is not None
        line = await asyncio.to_thread(other.stdout.readline)
        assert line.strip() == "wan13: waiting: another process is downloading it"
        assert other.poll() is None
    assert (await here).how == "downloaded"
    output, _ = await asyncio.to_thread(other.communicate, timeout=60)
    assert other.returncode == 0, output
    assert "(marker)" in output
    paths = [g.path for g in local_hub.file_gets(hub_repos.WAN13)]
    assert len(paths) == len(set(paths))


async def test_a_stop_request_ends_the_download_and_frees_the_lock(
    local_hub: LocalHub, tmp_path: Path
) -> None:
    """GIVEN a download in progress WHEN the worker asks to stop THEN provisioning raises
    Interrupted, leaves no partial file and no marker, and a later provision completes."""
    stop = threading.Event()
    with local_hub.downloads_held():
        task = asyncio.create_task(
            _provision(local_hub.url, tmp_path, ModelType.WAN13, should_stop=stop.is_set)
        )
        assert await asyncio.to_thread(local_hub.state.download_arrived.wait, 10)
        stop.set()
    with pytest.raises(Interrupted):
        await task
    models_dir = tmp_path / "models" / "wan13"
    assert not (models_dir / ".complete").exists()
    assert not list(models_dir.rglob("*.incomplete"))
    assert (await _provision(local_hub.url, tmp_path, ModelType.WAN13)).how == "downloaded"


async def test_a_damaged_file_is_fetched_again(local_hub: LocalHub, tmp_path: Path) -> None:
    """GIVEN a provisioned folder whose transformer file was truncated afterwards WHEN
    provisioned again THEN the marker no longer vouches for it and only that file is fetched."""
    result = await _provision(local_hub.url, tmp_path, ModelType.WAN13)
    damaged = result.models_dir / "Wan2.1-T2V-1.3B" / hub_repos.BIG_FILE[1]
    damaged.write_bytes(damaged.read_bytes()[:1000])
    local_hub.clear_log()

    again = await _provision(local_hub.url, tmp_path, ModelType.WAN13)

    assert again.how == "downloaded"
    assert [g.path.rsplit("/", 1)[-1] for g in local_hub.file_gets(hub_repos.WAN13)] == [
        hub_repos.BIG_FILE[1]
    ]
    assert damaged.read_bytes() == hub_repos.wan13().files[hub_repos.BIG_FILE[1]]


async def test_a_missing_repository_fails_for_good(local_hub: LocalHub, tmp_path: Path) -> None:
    """GIVEN a Hub without the Qwen repository WHEN provisioned THEN it fails permanently on
    model_type (retrying cannot create the repository)."""
    del local_hub.state.repos[("model", hub_repos.QWEN)]
    with pytest.raises(Permanent) as refused:
        await _provision(local_hub.url, tmp_path, ModelType.QWEN)
    assert (refused.value.code, refused.value.field) == (ErrorCode.PROVISION_FAILED, "model_type")


async def test_an_unreachable_hub_is_retryable(tmp_path: Path) -> None:
    """GIVEN nothing on the volume and no Hub listening WHEN provisioned THEN the failure is
    retryable: the network may come back."""
    with pytest.raises(Retryable):
        await _provision("http://127.0.0.1:9", tmp_path, ModelType.SDXL)
    lock = weights_lock.WeightsLock(weights_lock.lock_path(tmp_path / "models" / "sdxl"))
    assert lock.try_acquire(), "the failed attempt released the lock"
    lock.release()


def test_provision_command_fills_a_volume(
    local_hub: LocalHub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """GIVEN ``loraq provision`` with HF_TOKEN WHEN run for three types THEN all are ready and
    it exits 0; without the token the gated one fails, naming the field."""
    from loraq import cli

    main = cli.main
    # The command configures structlog for the process; keep this test's capture out of it.
    monkeypatch.setattr(cli, "configure_logging", lambda *args, **kwargs: None)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    args = [
        "provision",
        "tiny",
        "flux",
        "sdxl",
        "--volume",
        str(tmp_path),
        "--endpoint",
        local_hub.url,
    ]
    assert main(args) == 0
    assert "tiny: built in" in capsys.readouterr().out
    assert (tmp_path / "models" / "flux" / ".complete").is_file()
    assert (tmp_path / "models" / "sdxl" / ".complete").is_file()

    shutil.rmtree(tmp_path / "models" / "flux")
    monkeypatch.delenv("HF_TOKEN")
    assert main(["provision", "flux", "--volume", str(tmp_path), "--endpoint", local_hub.url]) == 1
    assert f"flux: provision_failed ({TOKEN_FIELD})" in capsys.readouterr().out
