"""Launch the trainer exactly as diffusion-pipe documents it, in its own process group.

``deepspeed --num_gpus=N train.py --deepspeed --config train.toml [--resume_from_checkpoint
RUN] --master_port P``. The built-in ``tiny`` trainer is launched by the same code with its own
``train.py``. Each job gets a free master port (several jobs may share a host) and its own
session, so stopping a job reaches every rank the launcher spawned.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import stages.tiny_trainer
from infra.settings import Settings
from stages.provision import hub_cache_dir
from stages.registry import ModelSpec
from stages.trainer.gpus import gpu_names, needs_nccl_p2p_disabled
from stages.trainer.run_dirs import Checkpoint
from stages.trainer.shm import release_shared_memory

# Never hand the worker's own credentials to the trainer: it needs none of them.
_SECRET_ENV = re.compile(r"(TOKEN|SECRET|PASSWORD|CREDENTIAL|API_KEY|ACCESS_KEY)", re.I)
_DROPPED_PREFIXES = ("AWS_", "LORAQ_", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "GEMINI", "GOOGLE_")
SAVE_QUIT_FILE = "save_quit"
SAVE_FILE = "save"


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    master_port: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def deepspeed_command(settings: Settings) -> str:
    configured = settings.deepspeed_bin
    beside_python = Path(sys.executable).parent / configured
    if not Path(configured).is_absolute() and beside_python.exists():
        return str(beside_python)
    return configured


def trainer_script(spec: ModelSpec, settings: Settings) -> tuple[Path, Path]:
    """(train.py, working directory): diffusion-pipe imports its modules relative to its root."""
    if spec.builtin:
        script = Path(stages.tiny_trainer.__file__).parent / "train.py"
        return script, script.parent
    return settings.diffusion_pipe_dir / "train.py", settings.diffusion_pipe_dir


def trainer_env(
    settings: Settings,
    base: dict[str, str] | None = None,
    secrets: Mapping[str, str] | None = None,
    gpus: tuple[str, ...] | None = None,
) -> dict[str, str]:
    """The trainer's environment: the worker's, less every credential, plus the request's own
    trainer secrets (``WANDB_API_KEY``), which are never written to the volume."""
    env = {
        key: value
        for key, value in (os.environ if base is None else base).items()
        if not key.startswith(_DROPPED_PREFIXES) and not _SECRET_ENV.search(key)
    }
    env.update(
        PYTHONUNBUFFERED="1",
        TORCH_EXTENSIONS_DIR=str(settings.torch_extensions_dir),
        PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True",
    )
    # Every model type trains from the volume alone: what a loader fetches by repo id (SDXL's
    # configs and tokenizers, diffusers' from_single_file) was provisioned into this cache, and
    # offline a missing file fails at once instead of waiting on, or depending on, the Hub.
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hub_cache_dir(settings.volume)))
    disable_p2p = settings.nccl_disable_p2p
    if disable_p2p is None:
        disable_p2p = needs_nccl_p2p_disabled(gpu_names() if gpus is None else gpus)
    if disable_p2p:
        # RTX 4000-series cards hang in NCCL's P2P/IB probes (diffusion-pipe's README).
        env.update(NCCL_P2P_DISABLE="1", NCCL_IB_DISABLE="1")
    env.update(secrets or {})
    return env


def build_launch(
    settings: Settings,
    spec: ModelSpec,
    train_toml: Path,
    *,
    resume: Checkpoint | None = None,
    master_port: int | None = None,
    cache_only: bool = False,
    trust_cache: bool = False,
    regenerate_cache: bool = False,
    secrets: Mapping[str, str] | None = None,
) -> Launch:
    script, cwd = trainer_script(spec, settings)
    argv = [
        deepspeed_command(settings),
        f"--num_gpus={settings.num_gpus}",
        str(script),
        "--deepspeed",
        "--config",
        str(train_toml),
    ]
    if resume is not None:
        argv += ["--resume_from_checkpoint", resume.run_dir.name]
    if cache_only:
        argv.append("--cache_only")
    if regenerate_cache:
        argv.append("--regenerate_cache")
    if trust_cache:
        argv.append("--trust_cache")
    port = master_port or free_port()
    argv += ["--master_port", str(port)]
    return Launch(argv, cwd, trainer_env(settings, secrets=secrets), port)


class TrainerProcess:
    """One trainer run: its merged output as lines, a polite stop, and a hard one."""

    def __init__(self, process: asyncio.subprocess.Process, master_port: int) -> None:
        self._process = process
        self._master_port = master_port

    @classmethod
    async def start(cls, launch: Launch) -> TrainerProcess:
        guarded = [
            sys.executable,
            "-m",
            "stages.trainer.guard",
            "--parent",
            str(os.getpid()),
            "--",
            *launch.argv,
        ]
        process = await asyncio.create_subprocess_exec(
            *guarded,
            cwd=launch.cwd,
            env=launch.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            # No preexec_fn: with one, Python runs every at-fork hook in the child, and
            # huggingface_hub's (close its httpx client) blocks forever on a pool lock that an
            # upload thread held at the fork; Popen, on the event loop, then waits for an exec
            # that never comes. The guard sets PR_SET_PDEATHSIG itself, first thing.
            limit=1 << 20,
        )
        return cls(process, launch.master_port)

    @property
    def pid(self) -> int:
        return self._process.pid

    async def lines(self) -> AsyncIterator[str]:
        assert self._process.stdout is not None
        while raw := await self._process.stdout.readline():
            yield raw.decode("utf-8", errors="replace").rstrip("\r\n")

    async def wait(self) -> int:
        return await self._process.wait()

    def finish(self) -> None:
        """After the run, however it ended: no rank left alive, no shared memory left behind."""
        self.kill_group()
        release_shared_memory(self._master_port)

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, sig)

    async def stop(self, grace_s: float) -> int:
        """SIGTERM the whole group, then SIGKILL whatever is left after ``grace_s``."""
        self.kill_group(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self._process.wait(), grace_s)
        except TimeoutError:
            self.kill_group(signal.SIGKILL)
            return await self._process.wait()


def clear_control_files(output_dir: Path) -> None:
    """Remove ``save``/``save_quit`` left by a run that died before reading them.

    Otherwise the resumed trainer would checkpoint and quit at its very first step.
    """
    for name in (SAVE_QUIT_FILE, SAVE_FILE):
        for stale in output_dir.glob(f"*/{name}"):
            stale.unlink(missing_ok=True)


def request_save_quit(run_dir: Path) -> None:
    """diffusion-pipe's control file: checkpoint at the next step boundary, then exit."""
    (run_dir / SAVE_QUIT_FILE).touch()
