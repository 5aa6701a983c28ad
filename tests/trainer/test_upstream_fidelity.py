"""Where loraq relies on diffusion-pipe's behaviour, tiny behaves so, and loraq copes with it.

Each pair below first shows tiny doing what upstream does at 8f83dbf (the failure included),
then runs loraq's train stage on the same state. Real trainer processes throughout.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import toml
from safetensors.torch import load_file

from contracts.enums import ErrorCode, ModelType, StageName
from contracts.ledger import Ledger
from contracts.request import JobRequest
from infra.settings import Settings
from infra.volume import JobPaths, JobStore, utcnow
from loraq.sample_data import write_image_dataset
from stages import train
from stages.configure import TRAIN_TOML, build_configs, write_configs
from stages.context import StageContext
from stages.tiny_trainer.cache import LATENTS, METADATA
from stages.tiny_trainer.train import DEVICE_MEMORY_ENV, HOLD_SAVE_ENV
from stages.trainer.failures import OutOfMemory
from stages.trainer.run_dirs import newest_run_dir

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_PY = REPO_ROOT / "stages" / "tiny_trainer" / "train.py"
LORA = "adapter_model.safetensors"
IMAGES = 4  # batch 1: four steps an epoch


async def _ignore(*_: object) -> None:
    return None


def _job(tmp_path: Path, epochs: int = 2) -> StageContext:
    store = JobStore(tmp_path / "volume")
    paths = store.paths("job")
    write_image_dataset(paths.dataset / "images", count=IMAGES)
    request = JobRequest.model_validate(
        {
            "input": {
                "model_type": "tiny",
                "dataset": {"type": "precaptioned", "images_url": "https://x/y.zip"},
                "training": {
                    "epochs": epochs,
                    "lora_rank": 4,
                    "save_every_n_epochs": 1,
                    "warmup_steps": 0,
                    "gradient_accumulation_steps": 1,
                },
            }
        }
    ).input
    configs = build_configs(request, paths, tmp_path, {"images": IMAGES})
    write_configs(configs, paths.config)
    now = utcnow()
    ledger = Ledger(job_id="job", model_type=ModelType.TINY, created_at=now, updated_at=now)
    ledger.stage(StageName.CONFIGURE).outputs["total_steps"] = configs.total_steps
    return StageContext(
        job_id="job",
        request=request,
        paths=paths,
        store=store,
        settings=Settings(queue_url="q", volume=tmp_path / "volume"),
        ledger=ledger,
        emit=_ignore,
        stop_requested=asyncio.Event(),
    )


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["MASTER_ADDR"] = "127.0.0.1"
    env.update(extra)
    return env


def _tiny(config: Path, *flags: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """tiny run directly (as ``python train.py``, which it supports like train.py)."""
    done = subprocess.run(
        [sys.executable, str(TRAIN_PY), "--deepspeed", "--config", str(config), *flags],
        env=env or _env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode, done.stdout + done.stderr


def _kill_during_save(config: Path, run_root: Path, name: str) -> None:
    """Checkpoint at step 2 (a first run capped with ``max_steps = 2``), then resume and
    SIGKILL the trainer, as a node loss would, while the save of ``name`` is half written."""
    capped = config.with_name("capped.toml")
    capped.write_text(toml.dumps({**toml.loads(config.read_text()), "max_steps": 2}))
    code, output = _tiny(capped)
    assert code == 0, output[-2000:]
    run_dir = newest_run_dir(run_root)
    assert run_dir is not None
    argv = [sys.executable, str(TRAIN_PY), "--deepspeed", "--config", str(config)]
    with subprocess.Popen(
        [*argv, "--resume_from_checkpoint", run_dir.name],
        env=_env(**{HOLD_SAVE_ENV: name}),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(f"Holding the save of {name}"):
                os.killpg(proc.pid, signal.SIGKILL)
                break
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _copy_job(ctx: StageContext, to: Path) -> Path:
    """The output dir and a train.toml pointing at the copy: for the bare-trainer check."""
    shutil.copytree(ctx.paths.output, to / "output")
    config = toml.loads((ctx.paths.config / TRAIN_TOML).read_text())
    config["output_dir"] = str(to / "output")
    path = to / TRAIN_TOML
    path.write_text(toml.dumps(config))
    return path


def _launches(paths: JobPaths) -> int:
    log = paths.root / train.LOG_FILE
    return sum("cmd = " in line for line in log.read_text().splitlines()) if log.exists() else 0


async def test_a_kill_mid_save_breaks_a_bare_resume_and_loraq_resumes_cleanly(
    tmp_path: Path,
) -> None:
    """GIVEN a checkpoint at step 2 and a SIGKILL while epoch1's LoRA is half written (step 4)
    WHEN tiny resumes bare THEN it fails with FileExistsError on epoch1/tmp, as upstream's
    saver does; WHEN loraq's train stage runs on the same state THEN it removes the torn save,
    resumes from step 2, and ends with epoch1 and epoch2 complete and loadable."""
    ctx = _job(tmp_path)
    _kill_during_save(ctx.paths.config / TRAIN_TOML, ctx.paths.output, "epoch1")
    run_dir = newest_run_dir(ctx.paths.output)
    assert run_dir is not None and (run_dir / "epoch1" / "tmp").is_dir()
    assert (run_dir / "latest").read_text().strip() == "global_step2"
    with pytest.raises(Exception):  # noqa: B017 - the half-written file is not a LoRA
        load_file(run_dir / "epoch1" / LORA)

    bare = _copy_job(ctx, tmp_path / "bare")
    code, output = _tiny(bare, "--resume_from_checkpoint")
    assert code != 0 and "FileExistsError" in output and "epoch1/tmp" in output

    outcome = await train.run(ctx)

    assert outcome.outputs["latest_epoch"] == "epoch2" and outcome.outputs["final_step"] == 8
    for epoch in ("epoch1", "epoch2"):
        assert not (run_dir / epoch / "tmp").exists()
        assert load_file(run_dir / epoch / LORA)


async def test_a_finished_run_is_never_resumed_past_its_end(tmp_path: Path) -> None:
    """GIVEN a job whose trainer finished (final checkpoint written, epoch2 saved) but whose
    stage was never recorded WHEN tiny resumes bare from the final checkpoint THEN it trains a
    whole epoch 3 and saves epoch3, as train.py's loop does; WHEN loraq's stage runs again THEN
    it launches nothing and returns epoch2."""
    ctx = _job(tmp_path)
    first = await train.run(ctx)
    assert first.outputs["latest_epoch"] == "epoch2"
    launches = _launches(ctx.paths)

    bare = _copy_job(ctx, tmp_path / "bare")
    code, output = _tiny(bare, "--resume_from_checkpoint")
    assert code == 0, output[-2000:]
    assert "Saving model to directory epoch3" in output
    assert any((tmp_path / "bare" / "output").glob("*/epoch3"))

    again = await train.run(ctx)

    assert _launches(ctx.paths) == launches
    assert again.outputs["latest_epoch"] == "epoch2" and again.outputs["final_step"] == 8
    run_dir = newest_run_dir(ctx.paths.output)
    assert run_dir is not None and not (run_dir / "epoch3").exists()


async def test_out_of_memory_fails_once_naming_the_knobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN a device smaller than one step needs WHEN the stage trains THEN torch's
    OutOfMemoryError text is recognised and the stage fails for good with out_of_memory on
    the resolution, naming resolution and batch size (tiny has no block swap)."""
    monkeypatch.setenv(DEVICE_MEMORY_ENV, "0.01")
    ctx = _job(tmp_path, epochs=1)
    with pytest.raises(OutOfMemory) as caught:
        await train.run(ctx)
    failure = caught.value
    assert failure.code == ErrorCode.OUT_OF_MEMORY and not failure.retryable
    assert failure.field == "input.training.resolution"
    assert "training.resolution" in failure.message and "training.batch_size" in failure.message
    assert "blocks_to_swap" not in failure.message
    assert "CUDA out of memory" in failure.message


def test_the_latent_cache_follows_upstreams_three_flags(tmp_path: Path) -> None:
    """GIVEN tiny's real latent cache WHEN cached, then torn, then trusted THEN --cache_only
    writes it, --trust_cache loads it without fingerprinting, a torn cache under --trust_cache
    fails the run (as a torn upstream cache does), and --regenerate_cache rebuilds it."""
    ctx = _job(tmp_path, epochs=1)
    config = ctx.paths.config / TRAIN_TOML
    cache = ctx.paths.dataset / "images" / "cache" / "tiny"

    code, output = _tiny(config, "--cache_only")
    assert code == 0 and "[CACHE] Cached 4 images" in output, output[-2000:]
    assert (cache / METADATA).is_file() and (cache / LATENTS).is_file()
    code, output = _tiny(config, "--cache_only", "--trust_cache")
    assert code == 0 and "trusting it (--trust_cache)" in output

    latents = (cache / LATENTS).read_bytes()
    (cache / LATENTS).write_bytes(latents[: len(latents) // 2])  # killed mid-write
    code, output = _tiny(config, "--cache_only", "--trust_cache")
    assert code != 0

    code, output = _tiny(config, "--cache_only", "--regenerate_cache")
    assert code == 0 and "deleting existing cache files" in output
    assert (cache / LATENTS).read_bytes() == latents
