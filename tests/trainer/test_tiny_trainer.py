"""The built-in `tiny` trainer honours diffusion-pipe's contract, checked on real processes.

Slow tests launch `stages/tiny_trainer/train.py` through the real `deepspeed` launcher (and once
without it) on a generated 8-image dataset; the fast ones check config rules and loader state
in-process. The first DeepSpeed start on a machine compiles a CPU comm op (~1 min); it is cached
under `<venv>/torch_extensions`, as loraq's launcher does.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import toml
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open
from safetensors.torch import load_file

from contracts.request import JobInput
from infra.volume import JobPaths
from stages.configure import build_configs, measure_media, write_configs
from stages.tiny_trainer.data import EpochLoader, load_dataset, parse_dataset_config
from stages.tiny_trainer.model import (
    TinyDiffusionObjective,
    TinyDiTConfig,
    build_base_model,
    inject_lora,
    lora_state_dict,
)
from stages.tiny_trainer.train import ALPHA_ERROR, set_config_defaults

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_PY = REPO_ROOT / "stages" / "tiny_trainer" / "train.py"
DEEPSPEED = Path(sys.prefix) / "bin" / "deepspeed"
STEP_LINE = re.compile(
    r"^steps: (\d+) loss: (\d+\.\d{4}) iter time \(s\): \d+\.\d{3} samples/sec: \d+\.\d{3}$"
)
RUN_DIR_NAME = re.compile(r"^\d{8}_\d{2}-\d{2}-\d{2}$")
RANK = 16
# 8 images, micro-batch 2 → 4 steps per epoch; 12 epochs → 48 steps.
EPOCHS, STEPS_PER_EPOCH = 12, 4
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
_COLOURS = [
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (255, 0, 255),
    (0, 255, 255),
    (255, 128, 0),
    (128, 0, 255),
]
_BACKGROUNDS = [(20, 20, 60), (240, 240, 230), (30, 90, 30), (90, 30, 30)]


@dataclass(frozen=True)
class Run:
    returncode: int
    lines: list[str]

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def steps(self) -> list[tuple[int, float]]:
        """(step, loss) of every progress line."""
        found = (STEP_LINE.match(line) for line in self.lines)
        return [(int(m[1]), float(m[2])) for m in found if m]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["TORCH_EXTENSIONS_DIR"] = os.path.join(sys.prefix, "torch_extensions")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _train(
    config: Path, *extra: str, direct: bool = False, on_line: Callable[[str], None] | None = None
) -> Run:
    """Run the trainer to completion, reading its merged output line by line as it comes."""
    script_args = [
        str(TRAIN_PY),
        "--deepspeed",
        "--config",
        str(config),
        *extra,
        "--master_port",
        str(_free_port()),
    ]
    env = _env()
    if direct:
        argv = [sys.executable, *script_args]
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    else:
        argv = [str(DEEPSPEED), "--num_gpus=1", *script_args]
    lines: list[str] = []
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO_ROOT
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            lines.append(line)
            if on_line is not None:
                on_line(line)
        returncode = proc.wait()
    return Run(returncode, lines)


def _make_dataset(root: Path) -> Path:
    """8 coloured shapes (40×32, so the centre crop matters) with captions, plus a video to skip."""
    images = root / "images"
    images.mkdir(parents=True)
    for i, colour in enumerate(_COLOURS):
        img = Image.new("RGB", (40, 32), _BACKGROUNDS[i % 4])
        draw = ImageDraw.Draw(img)
        shape = "circle" if i % 2 else "square"
        box = (6 + i, 6, 24 + i % 3, 26) if i % 2 else (4 + i, 8, 20 + i, 28)
        (draw.ellipse if i % 2 else draw.rectangle)(box, fill=colour)
        img.save(images / f"{i}.png")
        (images / f"{i}.txt").write_text(f"a {shape} number {i}")
    (images / "clip.mp4").write_bytes(b"not really a video")
    dataset = root / "dataset.toml"
    dataset.write_text(
        toml.dumps(
            {
                "resolutions": [32],
                "enable_ar_bucket": False,
                "frame_buckets": [1],
                "directory": [{"path": str(images), "num_repeats": 1}],
            }
        )
    )
    return dataset


def _write_config(root: Path, dataset: Path, **overrides: Any) -> Path:
    """A train.toml like loraq writes, with settings under which the tiny LoRA visibly learns."""
    config: dict[str, Any] = {
        "output_dir": str(root / "output"),
        "dataset": str(dataset),
        "epochs": EPOCHS,
        "micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "warmup_steps": 0,
        "save_every_n_epochs": 6,
        "checkpoint_every_n_epochs": 6,
        "save_dtype": "bfloat16",
        "lr_scheduler": "constant",
        "activation_checkpointing": False,
        "caching_batch_size": 1,
        "video_clip_mode": "single_beginning",
        "model": {"type": "tiny", "dtype": "float32"},
        "adapter": {"type": "lora", "rank": RANK, "dtype": "bfloat16"},
        "optimizer": {
            "type": "adamw_optimi",
            "lr": 5e-3,
            "betas": [0.9, 0.99],
            "weight_decay": 0.01,
            "eps": 1e-8,
        },
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            config[key].update(value)
        else:
            config[key] = value
    root.mkdir(parents=True, exist_ok=True)
    path = root / "train.toml"
    path.write_text(toml.dumps(config))
    return path


@pytest.fixture(scope="module")
def dataset_toml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory, dataset_toml: Path) -> tuple[Run, Path]:
    """One uninterrupted 12-epoch run, shared by the loss and layout checks."""
    root = tmp_path_factory.mktemp("full")
    run = _train(_write_config(root, dataset_toml))
    assert run.returncode == 0, run.output[-3000:]
    return run, root / "output"


@pytest.mark.slow
def test_loss_falls(full_run: tuple[Run, Path]) -> None:
    """GIVEN 8 captioned images and a rank-16 LoRA on the frozen tiny DiT
    WHEN it trains 48 steps through the deepspeed launcher
    THEN every step prints DeepSpeed's progress line, numbered 1..48, and the mean loss of the
    last 5 steps is clearly below the mean of the first 5."""
    run, _ = full_run
    steps = run.steps
    assert [s for s, _ in steps] == list(range(1, TOTAL_STEPS + 1))
    losses = [loss for _, loss in steps]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, (first, last)


@pytest.mark.slow
def test_run_dir_layout(full_run: tuple[Run, Path]) -> None:
    """GIVEN the finished run WHEN its output_dir is inspected
    THEN it holds one UTC-stamped run dir with the configs, epoch6/ and epoch12/ adapters in
    PEFT/ComfyUI form and save_dtype, DeepSpeed checkpoints + latest, and the saver's log lines."""
    run, output_dir = full_run
    (run_dir,) = list(output_dir.iterdir())
    assert RUN_DIR_NAME.match(run_dir.name)
    assert (run_dir / "train.toml").is_file() and (run_dir / "dataset.toml").is_file()
    for epoch in (6, 12):
        model_dir = run_dir / f"epoch{epoch}"
        tensors = load_file(model_dir / "adapter_model.safetensors")
        assert tensors and all(k.startswith("diffusion_model.") for k in tensors)
        assert all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in tensors)
        assert all(v.dtype == torch.bfloat16 for v in tensors.values())
        assert all(v.shape[0] == RANK for k, v in tensors.items() if k.endswith("lora_A.weight"))
        assert all(v.shape[1] == RANK for k, v in tensors.items() if k.endswith("lora_B.weight"))
        with safe_open(model_dir / "adapter_model.safetensors", "pt") as f:
            assert f.metadata() == {"format": "pt"}
        adapter_config = json.loads((model_dir / "adapter_config.json").read_text())
        assert adapter_config["peft_type"] == "LORA"
        assert adapter_config["r"] == adapter_config["lora_alpha"] == RANK
        assert (model_dir / "train.toml").is_file()
    assert (run_dir / "global_step24").is_dir() and (run_dir / "global_step48").is_dir()
    assert (run_dir / "latest").read_text().strip() == "global_step48"
    assert not list(run_dir.glob("*/tmp"))  # the saver removes each save's tmp/ last
    for line in (
        "Saving model to directory epoch6",
        "Started new epoch: 12",
        "Saving model to directory epoch12",
        "TRAINING COMPLETE!",
    ):
        assert line in run.lines
    assert "Started new epoch: 13" not in run.lines
    assert "WARNING: skipping 1 video file(s)" in run.output


@pytest.mark.slow
def test_resume_continues_the_step_counter(
    tmp_path: Path, dataset_toml: Path, full_run: tuple[Run, Path]
) -> None:
    """GIVEN a run checkpointing every epoch that is told to stop with the save_quit file
    WHEN it is resumed with a bare --resume_from_checkpoint (this time without the launcher)
    THEN the first run exits 0 after 'Manually quitting', the resumed one starts at the
    checkpointed step + 1, ends at the uninterrupted run's last step, and repeats its losses."""
    config = _write_config(tmp_path, dataset_toml, checkpoint_every_n_epochs=1)
    output_dir = tmp_path / "output"

    def quit_at_step_8(line: str) -> None:
        match = STEP_LINE.match(line)
        if match and int(match[1]) >= 8 and output_dir.is_dir():
            for run_dir in output_dir.iterdir():
                (run_dir / "save_quit").touch()

    first = _train(config, on_line=quit_at_step_8)
    assert first.returncode == 0, first.output[-3000:]
    assert "Manually quitting" in first.lines
    assert "TRAINING COMPLETE!" not in first.lines
    checkpointed = first.steps[-1][0]
    (run_dir,) = list(output_dir.iterdir())
    assert (run_dir / f"global_step{checkpointed}").is_dir()
    assert not (run_dir / "save_quit").exists()

    resumed = _train(config, "--resume_from_checkpoint", direct=True)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert any(line.startswith("Resuming training from checkpoint") for line in resumed.lines)
    steps = resumed.steps
    assert steps[0][0] == checkpointed + 1 and steps[-1][0] == TOTAL_STEPS
    assert [s for s, _ in steps] == list(range(checkpointed + 1, TOTAL_STEPS + 1))
    uninterrupted = dict(full_run[0].steps)
    assert all(loss == pytest.approx(uninterrupted[s], abs=2e-4) for s, loss in steps)
    assert list(output_dir.iterdir()) == [run_dir]
    assert (run_dir / f"epoch{EPOCHS}" / "adapter_model.safetensors").is_file()
    assert "TRAINING COMPLETE!" in resumed.lines


@pytest.mark.slow
def test_alpha_in_adapter_fails_like_diffusion_pipe(tmp_path: Path, dataset_toml: Path) -> None:
    """GIVEN an [adapter] table that sets alpha WHEN launched THEN a non-zero exit with
    diffusion-pipe's NotImplementedError message, and no run dir."""
    config = _write_config(tmp_path, dataset_toml, adapter={"alpha": 8})
    run = _train(config)
    assert run.returncode != 0
    assert "NotImplementedError" in run.output and ALPHA_ERROR in run.output
    assert not (tmp_path / "output").exists()


@pytest.mark.slow
def test_cache_only_validates_and_exits(tmp_path: Path, dataset_toml: Path) -> None:
    """GIVEN a valid config WHEN run with --cache_only (without the launcher)
    THEN it validates the dataset, exits 0, and trains nothing."""
    run = _train(_write_config(tmp_path, dataset_toml), "--cache_only", direct=True)
    assert run.returncode == 0, run.output[-3000:]
    assert any(line.startswith("Dataset OK: 8 images") for line in run.lines)
    assert not run.steps and not (tmp_path / "output").exists()


def test_alpha_is_rejected_before_anything_runs() -> None:
    """GIVEN an adapter that sets alpha WHEN defaults are applied THEN NotImplementedError."""
    config = {
        "save_every_n_epochs": 1,
        "model": {"type": "tiny", "dtype": "float32"},
        "adapter": {"type": "lora", "rank": 4, "alpha": 4},
    }
    with pytest.raises(NotImplementedError, match="Please remove alpha from the config"):
        set_config_defaults(config)


def test_alpha_defaults_to_rank_and_save_dtype_to_adapter_dtype() -> None:
    """GIVEN a minimal config WHEN defaults are applied THEN alpha == rank and the adapter's
    dtype (here the model's) is the save dtype."""
    config = {
        "save_every_n_steps": 5,
        "model": {"type": "tiny", "dtype": "bfloat16"},
        "adapter": {"type": "lora", "rank": 4},
        "optimizer": {"type": "adamw_optimi", "lr": 1e-3},
    }
    set_config_defaults(config)
    assert config["adapter"]["alpha"] == 4
    assert config["save_dtype"] == torch.bfloat16
    assert (config["seed"], config["steps_per_print"]) == (42, 1)


def test_missing_save_setting_is_refused() -> None:
    """GIVEN no save_every_n_* key WHEN defaults are applied THEN it fails like train.py."""
    with pytest.raises(AssertionError):
        set_config_defaults({"model": {"type": "tiny", "dtype": "float32"}})


def test_loader_state_resumes_the_same_batches() -> None:
    """GIVEN a loader stopped part way through epoch 2 WHEN a new loader loads its state
    THEN both hand out the same batches from there on, epochs advancing after their last batch."""
    reference = EpochLoader([10], batch_size=3, seed=7)
    batches = [reference.next_batch() for _ in range(5)]
    assert reference.steps_per_epoch == 3 and reference.epoch == 2
    assert len({i for batch in batches[:3] for i in batch}) == 9  # no item twice in an epoch
    resumed = EpochLoader([10], batch_size=3, seed=7)
    resumed.load_state_dict(reference.state_dict())
    assert [resumed.next_batch() for _ in range(4)] == [reference.next_batch() for _ in range(4)]
    assert resumed.epoch == reference.epoch == 4


def test_loader_batches_within_buckets_and_drops_each_remainder() -> None:
    """GIVEN buckets of 5, 3 and 2 items and a batch of 2 WHEN two epochs are drawn
    THEN each has ⌊5/2⌋ + ⌊3/2⌋ + ⌊2/2⌋ = 4 batches, none mixing buckets, no item twice;
    a subsample ratio of 0.5 keeps 2, and buckets too small for any batch still give 1 (wrap)."""
    loader = EpochLoader([5, 3, 2], batch_size=2, seed=3)
    assert loader.steps_per_epoch == 4
    bucket_of = {i: 0 if i < 5 else 1 if i < 8 else 2 for i in range(10)}
    for epoch in (1, 2):
        batches = [loader.next_batch() for _ in range(4)]
        assert loader.epoch == epoch + 1
        assert all(len({bucket_of[i] for i in batch}) == 1 for batch in batches)
        items = [i for batch in batches for i in batch]
        assert len(items) == len(set(items)) == 8
    assert EpochLoader([5, 3, 2], 2, seed=3, subsample_ratio=0.5).steps_per_epoch == 2
    wrapped = EpochLoader([1, 1], batch_size=4, seed=3)
    assert wrapped.steps_per_epoch == 1 and sorted(set(wrapped.next_batch())) == [0, 1]


def _mixed_job(root: Path) -> tuple[JobPaths, JobInput]:
    """5 square, 3 wide and 2 tall captioned images: three aspect-ratio buckets at 32 px."""
    paths = JobPaths(root / "job")
    images = paths.dataset / "images"
    images.mkdir(parents=True)
    sizes = [(32, 32)] * 5 + [(48, 32)] * 3 + [(16, 32)] * 2
    for i, size in enumerate(sizes):
        Image.new("RGB", size, _COLOURS[i % len(_COLOURS)]).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text(f"a {size[0]} by {size[1]} block")
    request = JobInput.model_validate(
        {
            "model_type": "tiny",
            "dataset": {"type": "precaptioned", "images_url": "https://x/y.zip"},
            "training": {
                "epochs": 3,
                "batch_size": 2,
                "gradient_accumulation_steps": 1,
                "warmup_steps": 0,
                "lora_rank": 4,
                "save_every_n_epochs": 3,
            },
        }
    )
    return paths, request


def test_tiny_buckets_the_images_as_the_step_count_does(tmp_path: Path) -> None:
    """GIVEN the mixed job configured by loraq WHEN the tiny trainer loads its dataset.toml
    THEN it holds the same three buckets (5, 3, 2 items) the step count plans with."""
    paths, request = _mixed_job(tmp_path)
    write_configs(
        build_configs(request, paths, tmp_path, measure_media(paths.dataset)), paths.config
    )
    dataset = load_dataset(parse_dataset_config(paths.config / "dataset.toml"))
    assert sorted(dataset.bucket_sizes) == [2, 3, 5] and len(dataset.images) == 10


@pytest.mark.slow
def test_run_ends_at_the_predicted_total_step(tmp_path: Path) -> None:
    """GIVEN the mixed job (batch 2, 3 epochs) configured by loraq's configure stage
    WHEN the tiny trainer runs its train.toml through the deepspeed launcher
    THEN the last step line is exactly the predicted total: (⌊5/2⌋ + ⌊3/2⌋ + ⌊2/2⌋) × 3 = 12,
    where items ÷ batch would have predicted 15."""
    paths, request = _mixed_job(tmp_path)
    configs = build_configs(request, paths, tmp_path / "models", measure_media(paths.dataset))
    write_configs(configs, paths.config)
    run = _train(paths.config / "train.toml")
    assert run.returncode == 0, run.output[-3000:]
    assert configs.total_steps == 12
    assert [step for step, _ in run.steps] == list(range(1, configs.total_steps + 1))
    assert "TRAINING COMPLETE!" in run.lines


def test_unknown_optimizer_is_refused_before_anything_runs() -> None:
    """GIVEN an optimizer the tiny trainer cannot map to AdamW WHEN defaults are applied
    THEN NotImplementedError names it."""
    config = {
        "save_every_n_epochs": 1,
        "model": {"type": "tiny", "dtype": "float32"},
        "adapter": {"type": "lora", "rank": 4},
        "optimizer": {"type": "Prodigy"},
    }
    with pytest.raises(NotImplementedError, match="Prodigy"):
        set_config_defaults(config)


def test_base_model_is_the_same_whatever_the_seed() -> None:
    """GIVEN two different global seeds WHEN the base model is built THEN its weights are equal,
    so an adapter trained with any seed fits the base every run builds."""
    torch.manual_seed(1)
    first = build_base_model(TinyDiTConfig()).state_dict()
    torch.manual_seed(2)
    second = build_base_model(TinyDiTConfig()).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_only_lora_tensors_train_and_save_under_comfyui_keys() -> None:
    """GIVEN the base model with rank-4 LoRA layers WHEN the trainable tensors are listed
    THEN they are exactly the lora_A [4, in] / lora_B [out, 4] pairs, B starting at zero."""
    dit = build_base_model(TinyDiTConfig())
    targets = inject_lora(dit, rank=4, alpha=4, dropout=0.0)
    state = lora_state_dict(TinyDiffusionObjective(dit), torch.float16)
    assert len(state) == 2 * len(targets)
    for module in targets:
        a = state[f"diffusion_model.{module}.lora_A.weight"]
        b = state[f"diffusion_model.{module}.lora_B.weight"]
        assert a.shape[0] == 4 and b.shape[1] == 4 and a.dtype == torch.float16
        assert not b.any()
