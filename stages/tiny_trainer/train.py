"""Entry script of the built-in `tiny` model: diffusion-pipe's train.py contract on the CPU.

Launched exactly like diffusion-pipe:

    deepspeed --num_gpus=1 stages/tiny_trainer/train.py --deepspeed --config train.toml \
        [--resume_from_checkpoint [RUN_DIR_NAME]] [--master_port P]

or without the launcher (`python train.py --deepspeed --config X`, with RANK, LOCAL_RANK,
WORLD_SIZE and MASTER_ADDR in the environment). It reads the same train.toml / dataset.toml keys,
writes the same run-dir layout (`<UTC stamp>/epochN/adapter_model.safetensors`,
`global_stepN/`, `latest`), prints the same progress lines and obeys the same `save` /
`save_quit` control files, so loraq's launcher, log parser, resume logic and publisher can be
exercised without a GPU. The code is an independent implementation of that behaviour.

Decisions where diffusion-pipe gives no answer for a CPU toy model:
- Compute is float32 whatever `[model] dtype` says; the adapter is saved in `save_dtype`
  (default: the adapter dtype, which defaults to the model dtype), as diffusion-pipe saves it.
- One process only (WORLD_SIZE must be 1); the tiny model has nothing to shard.
- A fresh run's randomness comes from `seed` (default 42); each step reseeds from (seed, step), so
  a resumed run repeats the losses an uninterrupted run would have printed.
"""

from __future__ import annotations

import argparse
import atexit
import inspect
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import deepspeed
import toml
import torch
from safetensors.torch import save, save_file

from stages.tiny_trainer.cache import cached_dataset
from stages.tiny_trainer.data import (
    EpochLoader,
    ImageDataset,
    load_dataset,
    parse_dataset_config,
    save_image,
)
from stages.tiny_trainer.model import (
    TinyDiffusionObjective,
    TinyDiTConfig,
    build_base_model,
    inject_lora,
    lora_state_dict,
    sample_noise_and_t,
    tokenize,
)
from stages.trainer.shm import release_shared_memory

DTYPE_MAP = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ALPHA_ERROR = (
    "This script forces alpha=rank to make the saved adapter format simpler and more predictable "
    "with downstream inference programs. Please remove alpha from the config."
)
DEFAULT_SEED = 42
DEFAULT_MASTER_PORT = 29500
DEFAULT_THREADS = 1
# DeepSpeed's own per-step logging is silenced; this script prints the pipeline-engine line itself.
_DS_STEPS_PER_PRINT = 2**31 - 1
_ADAMW_NAMES = frozenset({"adamw", "adamw_optimi"})
_RUN_DIR_FORMAT = "%Y%m%d_%H-%M-%S"


def build_parser() -> argparse.ArgumentParser:
    """diffusion-pipe's flags; those about sampling are accepted for compatibility."""
    parser = argparse.ArgumentParser(
        description="Train a LoRA for the tiny DiT (diffusion-pipe contract)."
    )
    parser.add_argument("--config", required=True, help="Path to TOML configuration file.")
    parser.add_argument(
        "--local_rank", type=int, default=-1, help="local rank passed from distributed launcher"
    )
    parser.add_argument(
        "--resume_from_checkpoint",
        nargs="?",
        const=True,
        default=None,
        help="Resume from the newest run dir, or from the named run dir under output_dir.",
    )
    parser.add_argument(
        "--reset_dataloader", action="store_true", help="On resume restore only the epoch."
    )
    parser.add_argument("--reset_optimizer", action="store_true")
    parser.add_argument("--reset_optimizer_params", action="store_true")
    parser.add_argument(
        "--regenerate_cache", action="store_true", help="Force regenerate cache."
    )
    parser.add_argument(
        "--cache_only", action="store_true", help="Cache model inputs then exit."
    )
    parser.add_argument(
        "--trust_cache",
        action="store_true",
        help="Load from metadata cache files if they exist, without checking if any "
        "fingerprints have changed.",
    )
    parser.add_argument(
        "--i_know_what_i_am_doing", action="store_true", help="Accepted; tiny skips no checks."
    )
    parser.add_argument(
        "--master_port",
        type=int,
        default=None,
        help=f"Master port (default: $MASTER_PORT, else {DEFAULT_MASTER_PORT}).",
    )
    parser.add_argument(
        "--dump_dataset", type=Path, default=None, help="Write the preprocessed images here, exit."
    )
    parser.add_argument(
        "--test_sample", action="store_true", help="Not supported by the tiny model."
    )
    return deepspeed.add_config_arguments(parser)  # type: ignore[no-any-return]


def load_config(path: str) -> dict[str, Any]:
    """Read train.toml (JSON round trip to plain dicts, like diffusion-pipe) and fill defaults."""
    with open(path) as f:
        config: dict[str, Any] = json.loads(json.dumps(toml.load(f)))
    set_config_defaults(config)
    return config


def set_config_defaults(config: dict[str, Any]) -> None:
    """Validate and default the keys the tiny trainer reads; unknown keys are left alone.

    Everything is checked here, before any directory exists or DeepSpeed starts, so a bad config
    fails in a second and leaves no run dir behind.
    """
    if not any(
        k in config for k in ("save_every_n_epochs", "save_every_n_steps", "save_every_n_examples")
    ):
        raise AssertionError(
            "train.toml must set one of save_every_n_epochs, save_every_n_steps, "
            "save_every_n_examples"
        )
    config.setdefault("activation_checkpointing", False)
    config.setdefault("warmup_steps", 0)
    config.setdefault("steps_per_print", 1)
    config.setdefault("seed", DEFAULT_SEED)
    config.setdefault("lr_scheduler", "constant")
    if config["lr_scheduler"] not in ("constant", "linear", "cosine"):
        raise NotImplementedError(f"Unknown lr_scheduler: {config['lr_scheduler']}")
    model = config["model"]
    if model["type"] != "tiny":
        raise NotImplementedError(f"Model type {model['type']} is not implemented")
    model_dtype = model["dtype"]
    model["dtype"] = DTYPE_MAP[model_dtype]
    if "adapter" not in config:
        raise NotImplementedError(
            "The tiny model only trains LoRA adapters: add an [adapter] table."
        )
    _set_adapter_defaults(config["adapter"], model_dtype)
    config["save_dtype"] = (
        DTYPE_MAP[config["save_dtype"]] if "save_dtype" in config else config["adapter"]["dtype"]
    )
    _check_optimizer_type(str(config["optimizer"]["type"]))


def _check_optimizer_type(optim_type: str) -> None:
    """The tiny trainer maps diffusion-pipe's AdamW variants to torch.optim.AdamW, nothing else."""
    if optim_type.lower() not in _ADAMW_NAMES:
        raise NotImplementedError(
            f"Optimizer type {optim_type} is not supported by the tiny model "
            "(use adamw or adamw_optimi)"
        )


def _set_adapter_defaults(adapter: dict[str, Any], model_dtype: str) -> None:
    """alpha is forced to rank, with diffusion-pipe's error when the config sets it."""
    if "alpha" in adapter:
        raise NotImplementedError(ALPHA_ERROR)
    if adapter["type"] != "lora":
        raise NotImplementedError(f"Adapter type {adapter['type']} is not implemented")
    adapter["alpha"] = adapter["rank"]
    adapter["dtype"] = DTYPE_MAP[adapter.get("dtype", model_dtype)]
    adapter.setdefault("dropout", 0.0)


def micro_batch_size(config: dict[str, Any]) -> int:
    """`micro_batch_size_per_gpu`: an int, or diffusion-pipe's [[resolution, n], ...] (first n)."""
    value = config.get("micro_batch_size_per_gpu", 1)
    return int(value[0][1]) if isinstance(value, list) else int(value)


def distributed_env(args: argparse.Namespace) -> None:
    """Fill the torch.distributed env like train.py; defaults let a bare `python train.py` run."""
    for key, default in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(key, default)
    os.environ["MASTER_ADDR"] = os.getenv("MASTER_ADDR", "localhost")
    port = (
        args.master_port
        if args.master_port is not None
        else os.getenv("MASTER_PORT", DEFAULT_MASTER_PORT)
    )
    os.environ["MASTER_PORT"] = str(port)
    if int(os.environ["WORLD_SIZE"]) != 1:
        raise NotImplementedError("The tiny model trains in one process: launch with --num_gpus=1.")


def compute_threads(config: dict[str, Any]) -> int:
    """Torch CPU threads: `[model] num_threads`, default 1.

    Matrices 64 wide gain nothing from a second thread (~15 ms per step either way on an idle
    2-core host), while OpenMP's spinning barriers make two threads 5-10× slower as soon as
    another job shares the cores, which is how loraq runs concurrent jobs.
    """
    requested = int(config["model"].get("num_threads", DEFAULT_THREADS))
    return max(1, min(requested, os.cpu_count() or 1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def build_objective(
    config: dict[str, Any], resolution: int
) -> tuple[TinyDiffusionObjective, list[str]]:
    """Frozen base DiT + LoRA layers (initialised from the training seed) inside the loss module."""
    model_cfg = TinyDiTConfig.from_model_table(config["model"], resolution)
    dit = build_base_model(model_cfg)
    dit.activation_checkpointing = bool(config["activation_checkpointing"])
    adapter = config["adapter"]
    targets = inject_lora(
        dit, int(adapter["rank"]), float(adapter["alpha"]), float(adapter["dropout"])
    )
    return TinyDiffusionObjective(dit), targets


def tokenize_captions(
    dataset: ImageDataset, config: dict[str, Any], resolution: int
) -> torch.Tensor:
    """Caption token ids [n, text_tokens] with the model's hashed-word "text encoder"."""
    model_cfg = TinyDiTConfig.from_model_table(config["model"], resolution)
    return torch.stack(
        [tokenize(c, model_cfg.text_tokens, model_cfg.vocab_size) for c in dataset.captions]
    )


def resolve_run_dir(output_dir: Path, resume: bool | str) -> Path:
    """Newest run dir (resume with no value), the named one, or a new UTC-stamped one."""
    if resume is True:
        runs = sorted(p for p in output_dir.glob("*") if p.is_dir())
        if not runs:
            raise FileNotFoundError(f"--resume_from_checkpoint: no run directory in {output_dir}")
        return runs[-1]
    if isinstance(resume, str):
        return output_dir / resume
    return output_dir / datetime.now(UTC).strftime(_RUN_DIR_FORMAT)


def prepare_run_dir(args: argparse.Namespace, config: dict[str, Any], resume: bool | str) -> Path:
    """Create the run dir; a fresh run gets copies of train.toml and dataset.toml like train.py.

    Resuming never creates a directory: train.py would make an empty `output_dir/<name>` for a
    mistyped name, which then sorts as the newest run and breaks the next bare resume.
    """
    run_dir = resolve_run_dir(Path(config["output_dir"]), resume)
    if resume and not run_dir.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint: run directory {run_dir} does not exist")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        shutil.copy(args.config, run_dir)
        shutil.copy(config["dataset"], run_dir)
    return run_dir


def build_optimizer(
    optim_config: dict[str, Any], params: list[torch.nn.Parameter]
) -> torch.optim.Optimizer:
    """AdamW for diffusion-pipe's adamw / adamw_optimi; keys AdamW lacks are dropped with a note."""
    accepted = inspect.signature(torch.optim.AdamW).parameters
    kwargs = {k: v for k, v in optim_config.items() if k in accepted and k != "params"}
    ignored = sorted(set(optim_config) - set(kwargs) - {"type"})
    if ignored:
        print(f"Ignoring optimizer keys torch.optim.AdamW does not take: {ignored}", flush=True)
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return torch.optim.AdamW(params, **kwargs)


def build_lr_scheduler(
    config: dict[str, Any], optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """train.py's schedule: constant/linear/cosine over all epochs, after a LinearLR warmup."""
    total = config["epochs"] * steps_per_epoch
    kind = config["lr_scheduler"]
    scheduler: torch.optim.lr_scheduler.LRScheduler
    if kind == "linear":
        scheduler = torch.optim.lr_scheduler.LinearLR(
            optimizer, start_factor=1.0, end_factor=0.0, total_iters=total
        )
    elif kind == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=1e-6)
    else:
        scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    warmup = int(config["warmup_steps"])
    if warmup > 0:
        ramp = torch.optim.lr_scheduler.LinearLR(
            optimizer, start_factor=1 / warmup, total_iters=warmup
        )
        scheduler = torch.optim.lr_scheduler.SequentialLR(
            optimizer, schedulers=[ramp, scheduler], milestones=[warmup]
        )
    return scheduler


def deepspeed_config(config: dict[str, Any]) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size(config),
        "gradient_accumulation_steps": int(config.get("gradient_accumulation_steps", 1)),
        "gradient_clipping": float(config.get("gradient_clipping", 1.0)),
        "steps_per_print": _DS_STEPS_PER_PRINT,
        "zero_optimization": {"stage": 0},
    }


def initialize_engine(
    args: argparse.Namespace, config: dict[str, Any], objective: TinyDiffusionObjective
) -> Any:
    """A plain DeepSpeedEngine over the objective, with an optimizer over the LoRA tensors only."""
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = build_optimizer(config["optimizer"], params)
    engine, _, _, _ = deepspeed.initialize(
        args=args, model=objective, optimizer=optimizer, config=deepspeed_config(config)
    )
    return engine


def adapter_config_json(adapter: dict[str, Any], target_modules: list[str]) -> dict[str, Any]:
    """What PEFT's LoraConfig.save_pretrained writes for diffusion-pipe's LoraConfig."""
    return {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": None,
        "bias": "none",
        "exclude_modules": None,
        "fan_in_fan_out": False,
        "inference_mode": False,
        "init_lora_weights": True,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": adapter["alpha"],
        "lora_bias": False,
        "lora_dropout": adapter["dropout"],
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": adapter["rank"],
        "rank_pattern": {},
        "revision": None,
        "target_modules": sorted({name.rsplit(".", 1)[-1] for name in target_modules}),
        "task_type": None,
        "use_dora": False,
        "use_rslora": False,
    }


@dataclass
class TrainContext:
    """Everything the saver and the loop share; built once in main()."""

    args: argparse.Namespace
    config: dict[str, Any]
    run_dir: Path
    objective: TinyDiffusionObjective
    target_modules: list[str]
    engine: Any
    loader: EpochLoader
    images: torch.Tensor  # [n_images, 3, N, N]
    tokens: torch.Tensor  # [n_images, text_tokens]
    items: torch.Tensor  # dataset item (with repeats) -> image index
    global_batch_size: int


class Saver:
    """diffusion-pipe's saver: epoch/step/time checkpoints, model saves and the control files."""

    def __init__(self, ctx: TrainContext) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.last_checkpoint_time: float | None = None

    def save_model(self, name: str) -> None:
        """Write ``<run_dir>/<name>/`` in place, exactly as diffusion-pipe's saver does.

        ``utils/saver.py`` (8f83dbf, ``save_adapter``, lines 58-85) makes ``<name>/tmp`` with
        ``exist_ok=False``, saves each rank's state dict there, writes the adapter files into
        ``<name>/`` itself (``models/base.py`` line 703: ``adapter_config.json`` first, then
        ``adapter_model.safetensors``), copies the config and removes ``tmp/`` last. A kill
        mid-save therefore leaves ``<name>/tmp`` beside a possibly torn LoRA, and the next save
        of ``<name>`` raises ``FileExistsError``: loraq must clean that up, so tiny must not.
        """
        print(f"Saving model to directory {name}", flush=True)
        save_dir = self.ctx.run_dir / name
        tmp_dir = save_dir / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=False)  # os.makedirs(tmp_dir, exist_ok=False)
        partial = lora_state_dict(self.ctx.objective, self.config["save_dtype"])
        torch.save(partial, tmp_dir / "state_dict_0.bin")
        state: dict[str, torch.Tensor] = {}
        for path in tmp_dir.glob("*.bin"):
            state.update(torch.load(path, weights_only=True, map_location="cpu"))
        adapter_json = adapter_config_json(self.config["adapter"], self.ctx.target_modules)
        (save_dir / "adapter_config.json").write_text(
            json.dumps(adapter_json, indent=2, sort_keys=True)
        )
        lora_path = save_dir / "adapter_model.safetensors"
        _hold_save_for_tests(name, state, lora_path)
        save_file(state, str(lora_path), metadata={"format": "pt"})
        shutil.copy(self.ctx.args.config, save_dir)
        shutil.rmtree(tmp_dir)

    def save_checkpoint(self, step: int, examples: int) -> None:
        """DeepSpeed checkpoint of the LoRA tensors + optimizer + scheduler + loader position."""
        client_state = {
            "step": step,
            "examples": examples,
            "custom_loader": self.ctx.loader.state_dict(),
        }
        self.ctx.engine.save_checkpoint(
            str(self.ctx.run_dir),
            client_state=client_state,
            save_latest=True,
            exclude_frozen_parameters=True,
        )

    def need_to_checkpoint(self, epoch: int | None = None) -> bool:
        """Epoch mode: every n epochs. Time mode: the first call only starts the clock."""
        if epoch is not None:
            every = self.config.get("checkpoint_every_n_epochs")
            if every and epoch % every == 0:
                self.last_checkpoint_time = time.time()
                return True
            return False
        if "checkpoint_every_n_minutes" not in self.config:
            return False
        now = time.time()
        if self.last_checkpoint_time is None:
            self.last_checkpoint_time = now
            return False
        if (now - self.last_checkpoint_time) / 60 > self.config["checkpoint_every_n_minutes"]:
            self.last_checkpoint_time = now
            return True
        return False

    def process_epoch(self, epoch: int, step: int, examples: int) -> tuple[int | None, bool, bool]:
        """After a step: if the loader moved to a new epoch, checkpoint/save the finished one."""
        checkpointed = saved = False
        if self.ctx.loader.epoch == epoch:
            return epoch, checkpointed, saved
        if self.need_to_checkpoint(epoch):
            self.save_checkpoint(step, examples)
            checkpointed = True
        every = self.config.get("save_every_n_epochs")
        if every and epoch % every == 0:
            self.save_model(f"epoch{epoch}")
            saved = True
        new_epoch = self.ctx.loader.epoch
        if new_epoch > self.config["epochs"]:
            return None, checkpointed, saved
        print(f"Started new epoch: {new_epoch}", flush=True)
        return new_epoch, checkpointed, saved

    def process_step(self, step: int, examples: int) -> tuple[bool, bool]:
        """Control files, save_every_n_steps and time-based checkpoints; `save_quit` exits 0."""
        save_file_path = self.ctx.run_dir / "save"
        quit_file_path = self.ctx.run_dir / "save_quit"
        manual_save = manual_quit = False
        if save_file_path.is_file():
            manual_save = True
            save_file_path.unlink()
        elif quit_file_path.is_file():
            manual_save = manual_quit = True
            quit_file_path.unlink()
        checkpointed = saved = False
        every = self.config.get("save_every_n_steps")
        if every and step % every == 0:
            self.save_model(f"step{step}")
            saved = True
        if self.need_to_checkpoint() or manual_save:
            self.save_checkpoint(step, examples)
            checkpointed = True
        if manual_quit:
            print("Manually quitting", flush=True)
            sys.exit(0)
        return checkpointed, saved


HOLD_SAVE_ENV = "TINY_HOLD_SAVE"


def _hold_save_for_tests(name: str, state: dict[str, torch.Tensor], lora_path: Path) -> None:
    """Fault tests' window into a save: with ``TINY_HOLD_SAVE=<name>``, write the first half of
    the LoRA file (what a kill mid-write leaves) and wait to be killed."""
    if os.environ.get(HOLD_SAVE_ENV) != name:
        return
    data = save(state, metadata={"format": "pt"})
    with open(lora_path, "wb") as f:
        f.write(data[: len(data) // 2])
    print(f"Holding the save of {name} half written until killed", flush=True)
    while True:
        time.sleep(60)


class ProgressPrinter:
    """Prints DeepSpeed's pipeline-engine line every `steps_per_print` optimizer steps."""

    def __init__(self, steps_per_print: int, train_batch_size: int) -> None:
        self.steps_per_print = steps_per_print
        self.train_batch_size = train_batch_size
        self.elapsed = 0.0

    def record(self, global_step: int, loss: float, seconds: float) -> None:
        self.elapsed += seconds
        if global_step % self.steps_per_print:
            return
        iter_time = self.elapsed / self.steps_per_print
        self.elapsed = 0.0
        samples_per_sec = self.train_batch_size / iter_time if iter_time > 0 else 0.0
        print(
            f"steps: {global_step} loss: {loss:0.4f} iter time (s): {iter_time:0.3f} "
            f"samples/sec: {samples_per_sec:0.3f}",
            flush=True,
        )


def train_step(ctx: TrainContext, step: int) -> float:
    """One optimizer step over gradient_accumulation_steps micro-batches; returns their mean loss.

    The RNG is reseeded from (seed, step) so noise, timesteps and dropout of a step do not
    depend on whether the run was resumed.
    """
    torch.manual_seed(ctx.config["seed"] * 1_000_003 + step)
    indices = ctx.loader.next_batch()
    micro = ctx.engine.train_micro_batch_size_per_gpu()
    losses: list[float] = []
    for start in range(0, len(indices), micro):
        idx = ctx.items[indices[start : start + micro]]
        x0 = ctx.images[idx]
        noise, t = sample_noise_and_t(x0)
        loss = ctx.engine(x0, ctx.tokens[idx], noise, t)
        ctx.engine.backward(loss)
        ctx.engine.step()
        losses.append(loss.item())
    return sum(losses) / len(losses)


def resume_training(ctx: TrainContext) -> tuple[int, int]:
    """Load the run dir's latest DeepSpeed checkpoint; returns (next step, examples after it)."""
    args = ctx.args
    optimizer = ctx.engine.optimizer
    param_groups = optimizer.param_groups.copy()
    load_path, client_state = ctx.engine.load_checkpoint(
        str(ctx.run_dir),
        load_module_strict=False,
        load_lr_scheduler_states=not args.reset_optimizer and not args.reset_optimizer_params,
        load_optimizer_states=not args.reset_optimizer,
    )
    if load_path is None:
        raise RuntimeError(
            f"No DeepSpeed checkpoint to resume from in {ctx.run_dir} (no 'latest' file)"
        )
    if args.reset_optimizer_params:
        optimizer.param_groups = param_groups
    if args.reset_dataloader:
        ctx.loader.epoch = client_state["custom_loader"]["epoch"]
    else:
        ctx.loader.load_state_dict(client_state["custom_loader"])
    step = client_state["step"] + 1
    examples = (
        client_state.get("examples", client_state["step"] * ctx.global_batch_size)
        + ctx.global_batch_size
    )
    print(
        f"Resuming training from checkpoint. Resuming at epoch: {ctx.loader.epoch}, step: {step}",
        flush=True,
    )
    return step, examples


DEVICE_MEMORY_ENV = "TINY_DEVICE_MEMORY_MIB"
# Bytes one image element costs in a step (activations, gradients): only the scaling matters.
_BYTES_PER_ELEMENT = 4 * 256


def check_device_memory(ctx: TrainContext) -> None:
    """A pretend GPU of ``TINY_DEVICE_MEMORY_MIB``: a step that needs more fails at its first
    allocation with torch's own ``OutOfMemoryError`` text, as a real card does."""
    capacity = os.environ.get(DEVICE_MEMORY_ENV)
    if not capacity:
        return
    micro = ctx.engine.train_micro_batch_size_per_gpu()
    need_mib = micro * ctx.images[0].numel() * _BYTES_PER_ELEMENT / 2**20
    if need_mib > float(capacity):
        raise torch.OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate {need_mib:.2f} MiB. GPU 0 has a total "
            f"capacity of {float(capacity):.2f} MiB of which 0 bytes is free."
        )


def train_loop(ctx: TrainContext, saver: Saver, step: int, examples: int) -> tuple[str, bool, bool]:
    """train.py's main loop; returns (final model name, just checkpointed, just saved)."""
    check_device_memory(ctx)
    printer = ProgressPrinter(int(ctx.config["steps_per_print"]), ctx.global_batch_size)
    max_steps = ctx.config.get("max_steps")
    epoch = ctx.loader.epoch
    while True:
        started = time.perf_counter()
        loss = train_step(ctx, step)
        printer.record(ctx.engine.global_steps, loss, time.perf_counter() - started)
        new_epoch, checkpointed, saved = saver.process_epoch(epoch, step, examples)
        if new_epoch is None:
            return f"epoch{epoch}", checkpointed, saved
        epoch = new_epoch
        checkpointed, saved = saver.process_step(step, examples)
        if max_steps is not None and step >= max_steps:
            return f"step{step}", checkpointed, saved
        step += 1
        examples += ctx.global_batch_size


def resolve_save_every_n_examples(config: dict[str, Any], global_batch_size: int) -> None:
    """train.py converts save_every_n_examples to steps once the global batch size is known."""
    if examples := config.pop("save_every_n_examples", None):
        config["save_every_n_steps"] = max(1, examples // global_batch_size)
        print(f"Computed save_every_n_steps = {config['save_every_n_steps']}", flush=True)


def build_context(
    args: argparse.Namespace,
    config: dict[str, Any],
    dataset: ImageDataset,
    resolution: int,
    resume: bool | str,
) -> TrainContext:
    """Distributed init, model, run dir, DeepSpeed engine, LR schedule and loader, in train.py's
    order (the run dir exists before the engine, the scheduler is set before any resume)."""
    seed_everything(int(config["seed"]))
    distributed_env(args)
    # DeepSpeed's shm all-reduce never unlinks its /dev/shm buffer; remove ours on exit.
    atexit.register(release_shared_memory, int(os.environ["MASTER_PORT"]))
    deepspeed.init_distributed()
    objective, targets = build_objective(config, resolution)
    run_dir = prepare_run_dir(args, config, resume)
    engine = initialize_engine(args, config, objective)
    gbs = engine.train_micro_batch_size_per_gpu() * engine.gradient_accumulation_steps()
    print(f"Global batch size = {gbs}", flush=True)
    resolve_save_every_n_examples(config, gbs)
    loader = EpochLoader(dataset.bucket_sizes, gbs, int(config["seed"]), dataset.subsample_ratio)
    engine.lr_scheduler = build_lr_scheduler(config, engine.optimizer, loader.steps_per_epoch)
    tokens = tokenize_captions(dataset, config, resolution)
    items = torch.tensor(dataset.items)
    return TrainContext(
        args,
        config,
        run_dir,
        objective,
        targets,
        engine,
        loader,
        dataset.images,
        tokens,
        items,
        gbs,
    )


def run_training(
    args: argparse.Namespace, config: dict[str, Any], dataset: ImageDataset, resolution: int
) -> None:
    """Optionally resume, train, then write the final checkpoint and model unless just written."""
    resume: bool | str = args.resume_from_checkpoint or config.get("resume_from_checkpoint", False)
    ctx = build_context(args, config, dataset, resolution, resume)
    monitoring_login(config)
    step, examples = resume_training(ctx) if resume else (1, ctx.global_batch_size)
    saver = Saver(ctx)
    # No shortcut for a checkpoint taken at the very end: like train.py (lines 915-965), the loop
    # then trains the whole next epoch and saves it. loraq never resumes from a final checkpoint.
    final_name, checkpointed, saved = train_loop(ctx, saver, step, examples)
    if not checkpointed:
        saver.save_checkpoint(step, examples)
    if not saved:
        saver.save_model(final_name)
    print("TRAINING COMPLETE!", flush=True)


def monitoring_login(config: dict[str, Any]) -> None:
    """What diffusion-pipe does with ``[monitoring]`` before training (train.py 561-573 at
    8f83dbf), up to the network: the three keys are indexed (a KeyError when one is missing),
    and the key is resolved the way ``wandb.login(key=...)`` resolves it, the argument when
    non-empty, else ``WANDB_API_KEY``; with neither wandb raises its no-tty UsageError. The
    tiny model never contacts W&B.
    """
    if not config.get("monitoring", {}).get("enable_wandb", False):
        return
    monitoring = config["monitoring"]
    names = ("wandb_api_key", "wandb_tracker_name", "wandb_run_name")
    key, _tracker, _run_name = (monitoring[name] for name in names)
    if not (key or os.environ.get("WANDB_API_KEY")):
        raise RuntimeError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])")
    print("wandb: W&B API key is configured (the tiny model logs nothing to W&B)", flush=True)


def dump_dataset(dataset: ImageDataset, out_dir: Path) -> None:
    """--dump_dataset: the images exactly as the model sees them, with their captions."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, (image, caption) in enumerate(zip(dataset.images, dataset.captions, strict=True)):
        save_image(image, out_dir / f"{i}.png")
        (out_dir / f"{i}.txt").write_text(caption)
    print(f"Dumped {len(dataset.images)} images to {out_dir}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    deepspeed.utils.set_log_level_from_string("info")
    config = load_config(args.config)
    torch.set_num_threads(compute_threads(config))
    spec = parse_dataset_config(config["dataset"])
    if args.dump_dataset is not None:  # train.py dumps before it caches (lines 495-514)
        dump_dataset(load_dataset(spec), args.dump_dataset)
        return
    dataset = cached_dataset(spec, regenerate=args.regenerate_cache, trust=args.trust_cache)
    if args.cache_only:
        print(
            f"Dataset OK: {len(dataset.images)} images, {len(dataset)} items with repeats in "
            f"{len(dataset.bucket_sizes)} bucket(s), resolution {spec.resolution}.",
            flush=True,
        )
        return
    if args.test_sample:
        raise NotImplementedError("--test_sample is not supported by the tiny model")
    run_training(args, config, dataset, spec.resolution)


if __name__ == "__main__":
    main()
