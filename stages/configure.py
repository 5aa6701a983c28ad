"""Configure: write diffusion-pipe's ``train.toml`` and ``dataset.toml`` for this job.

The request's documented fields map onto diffusion-pipe's keys; the other ``training`` keys
pass through, to the table where the trainer reads them (``[model]``, ``[adapter]``,
``[optimizer]``, the dataset file, the top level), as ``contracts/data/upstream_keys.json``
records. ``build_configs`` is pure so that ``loraq config`` and the golden tests produce
exactly what a job would run with; the run's total step count (the progress bar's
denominator) comes from ``stages/step_count.py``, fed with header measurements of the
downloaded media.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.enums import ErrorCode, StageName
from contracts.pass_through import TRAINER_SECRETS
from contracts.request import TOML_TABLES, JobInput
from contracts.toml_values import UnfaithfulToml, dumps
from contracts.upstream_keys import flat_tables, reader_of
from infra.volume import JobPaths, atomic_write_text
from stages.context import StageContext, StageOutcome
from stages.dataset_scan import measure_directory
from stages.errors import Permanent
from stages.registry import ModelSpec, spec_for
from stages.step_count import MediaFile, Trainer, predict_total_steps, unmeasured

NAME = StageName.CONFIGURE
TRAIN_TOML = "train.toml"
DATASET_TOML = "dataset.toml"


@dataclass(frozen=True)
class Configs:
    train: dict[str, Any]
    dataset: dict[str, Any]
    total_steps: int


def build_configs(
    request: JobInput,
    paths: JobPaths,
    models_dir: Path,
    media: Sequence[MediaFile] | Mapping[str, int],
    *,
    num_gpus: int = 1,
) -> Configs:
    """Both TOML tables and the run's step count (``stages/step_count.py``).

    ``media`` is the dataset's measurements (``measure_media``), or only counts per folder
    (``{"images": 10}``) where nothing can be measured; counts give the simple estimate.
    """
    spec = spec_for(request.model_type)
    t = request.training
    train: dict[str, Any] = {
        "output_dir": str(paths.output),
        "dataset": str(paths.config / DATASET_TOML),
        "epochs": t.epochs,
        "micro_batch_size_per_gpu": t.batch_size,
        "pipeline_stages": 1,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "gradient_clipping": t.gradient_clipping,
        "warmup_steps": t.warmup_steps,
        "save_every_n_epochs": t.save_every_n_epochs,
        "checkpoint_every_n_minutes": t.checkpoint_every_n_minutes,
        "activation_checkpointing": t.activation_checkpointing,
        "partition_method": "parameters",
        "save_dtype": t.save_dtype,
        "caching_batch_size": t.caching_batch_size,
        "steps_per_print": 1,
        "video_clip_mode": t.video_clip_mode or spec.default_video_clip_mode,
        "model": spec.model_table_for(models_dir),
        "adapter": {"type": "lora", "rank": t.lora_rank, "dtype": t.lora_dtype},
        "optimizer": {
            "type": t.optimizer_type,
            "lr": t.learning_rate,
            "betas": list(t.optimizer_betas),
            "weight_decay": t.optimizer_weight_decay,
            "eps": t.optimizer_eps,
        },
    }
    dataset = _dataset_table(request, spec, paths)
    _route_extras(t.extra_keys, train, dataset)
    _secret_placeholders(t.trainer_secrets, train)
    total = predict_total_steps(
        train,
        dataset,
        _as_media(media, paths),
        trainer=Trainer.TINY if spec.builtin else Trainer.DIFFUSION_PIPE,
        framerate=spec.framerate,
        num_gpus=num_gpus,
    )
    return Configs(train, dataset, total)


def _dataset_table(request: JobInput, spec: ModelSpec, paths: JobPaths) -> dict[str, Any]:
    resolution = min(request.training.resolution or spec.default_resolution, spec.max_resolution)
    frame_buckets = request.training.frame_buckets if spec.videos else [1]
    directories = []
    if request.dataset.images_url:
        directories.append(
            {"path": str(paths.dataset / "images"), "num_repeats": request.dataset.image_repeats}
        )
    if request.dataset.videos_url:
        directories.append(
            {"path": str(paths.dataset / "videos"), "num_repeats": request.dataset.video_repeats}
        )
    return {
        "resolutions": [resolution],
        "enable_ar_bucket": True,
        "min_ar": 0.5,
        "max_ar": 2.0,
        "num_ar_buckets": 7,
        "frame_buckets": frame_buckets,
        "directory": directories,
    }


def _route_extras(extras: dict[str, Any], train: dict[str, Any], dataset: dict[str, Any]) -> None:
    """Each pass-through key into the table its trainer reads it from
    (``contracts/data/upstream_keys.json``, the facts the request was checked against).

    A named table (``training.model``) is merged whole. A flat key goes to the one table that
    reads it for this ``[model] type`` and ``[optimizer] type``; the request's check refused
    every flat key read by none or by two, so the top level is only a fallback.
    """
    who = reader_of(str(train["model"]["type"]))
    optimizer = str(train["optimizer"]["type"])
    for key, value in extras.items():
        if key in TOML_TABLES and isinstance(value, dict):
            train.setdefault(key, {}).update(value)
            continue
        tables = flat_tables(who, optimizer, key)
        table = tables[0] if len(tables) == 1 else "train"
        if table == "train":
            train[key] = value
        elif table == "dataset":
            dataset[key] = value
        else:
            train.setdefault(table, {})[key] = value


def _secret_placeholders(secrets: Mapping[str, object], train: dict[str, Any]) -> None:
    """diffusion-pipe indexes ``monitoring.wandb_api_key`` (a KeyError without it): the TOML
    gets an empty one, and ``wandb.login`` reads ``WANDB_API_KEY`` from the trainer's
    environment instead (``contracts/pass_through.py`` has the sources)."""
    for (table, key), variable in TRAINER_SECRETS.items():
        if variable in secrets:
            train.setdefault(table, {})[key] = ""


def measure_media(dataset_dir: Path) -> list[MediaFile]:
    """Header measurements of ``images/`` and ``videos/``: what the step count is built from."""
    return measure_directory(dataset_dir / "images") + measure_directory(dataset_dir / "videos")


def _as_media(media: Sequence[MediaFile] | Mapping[str, int], paths: JobPaths) -> list[MediaFile]:
    """Counts alone (no files to measure yet) become unmeasured files: the estimate's fallback."""
    if isinstance(media, Mapping):
        return [
            file
            for kind, count in media.items()
            for file in unmeasured(paths.dataset / kind, count)
        ]
    return list(media)


def write_configs(configs: Configs, config_dir: Path) -> None:
    """Both files, each verified to read back as built (``contracts/toml_values.py``)."""
    dataset, train = dumps(configs.dataset), dumps(configs.train)
    atomic_write_text(config_dir / DATASET_TOML, dataset)
    atomic_write_text(config_dir / TRAIN_TOML, train)


async def run(ctx: StageContext) -> StageOutcome:
    models_dir = ctx.store.models_dir(ctx.request.model_type)
    configs = build_configs(
        ctx.request,
        ctx.paths,
        models_dir,
        measure_media(ctx.paths.dataset),
        num_gpus=ctx.settings.num_gpus,
    )
    if configs.total_steps == 0:
        # diffusion-pipe drops each size bucket's remainder: with every bucket smaller than one
        # global batch it has nothing to train on, and would fail only after caching latents.
        t = ctx.request.training
        raise Permanent(
            ErrorCode.DATASET_INVALID,
            "the dataset fills no whole batch in any size bucket (batch_size "
            f"{t.batch_size} × gradient_accumulation_steps {t.gradient_accumulation_steps} × "
            f"{ctx.settings.num_gpus} GPU(s)): add media, raise the repeats, or lower "
            "gradient_accumulation_steps",
            field="training.gradient_accumulation_steps",
        )
    try:
        write_configs(configs, ctx.paths.config)
    except UnfaithfulToml as exc:  # the request's values are checked on arrival: loraq's own bug
        raise Permanent(
            ErrorCode.INVALID_REQUEST,
            f"the trainer's config would not read back as written at {exc}",
            field="training",
        ) from exc
    return StageOutcome(
        {"train_toml": str(ctx.paths.config / TRAIN_TOML), "total_steps": configs.total_steps}
    )
