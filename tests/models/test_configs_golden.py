"""Golden tests: the train.toml and dataset.toml of every model type × dataset type.

The expected key sets below were read off diffusion-pipe's source at the pinned commit (they are
written here literally: CI has no checkout of it):
- train.py (``config[...]``, ``config.get(...)``, ``set_config_defaults``), utils/saver.py and
  models/base.py for the top level of train.toml;
- models/flux.py, sdxl.py, wan/wan.py, qwen_image.py, z_image.py, base.py (``ComfyPipeline``)
  and utils/common.py (``get_t_distribution``) for ``[model]``;
- train.py and models/base.py (``configure_adapter``) for ``[adapter]``;
- utils/dataset.py (``dataset_config``/``directory_config`` reads) for dataset.toml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import toml

from contracts.enums import ErrorCode, ModelType
from contracts.request import JobInput, JobRequest
from infra.volume import JobPaths
from stages.configure import build_configs, write_configs
from stages.errors import Permanent
from stages.pipeline import preflight

VOLUME = Path("/var/lib/loraq")
JOB = VOLUME / "jobs" / "golden"
MODELS = VOLUME / "models"

# -- what diffusion-pipe reads ------------------------------------------------------------------
TRAIN_KEYS_READ = frozenset(
    {
        "output_dir", "dataset", "epochs", "max_steps", "micro_batch_size_per_gpu",
        "image_micro_batch_size_per_gpu", "eval_micro_batch_size_per_gpu",
        "eval_image_micro_batch_size_per_gpu", "pipeline_stages", "gradient_accumulation_steps",
        "gradient_clipping", "warmup_steps", "force_constant_lr", "lr_scheduler",
        "blocks_to_swap", "eval_every_n_epochs", "eval_every_n_steps", "eval_every_n_examples",
        "eval_before_first_step", "eval_gradient_accumulation_steps", "eval_datasets",
        "disable_block_swap_for_eval", "save_every_n_epochs", "save_every_n_steps",
        "save_every_n_examples", "checkpoint_every_n_epochs", "checkpoint_every_n_minutes",
        "activation_checkpointing", "reentrant_activation_checkpointing", "partition_method",
        "partition_split", "save_dtype", "caching_batch_size", "map_num_proc", "compile",
        "steps_per_print", "video_clip_mode", "x_axis_examples", "logging_steps",
        "uncond_fraction", "regenerate_cache", "resume_from_checkpoint", "huber_delta",
        "smooth_l1_beta", "model", "adapter", "optimizer", "monitoring",
    }
)  # fmt: skip
TRAIN_KEYS_REQUIRED = frozenset({"output_dir", "dataset", "epochs", "model", "optimizer"})
SAVE_KEYS = frozenset({"save_every_n_epochs", "save_every_n_steps", "save_every_n_examples"})

# train.py's set_config_defaults reads these of every model; then each pipeline its own.
_ALL_MODELS = {"type", "dtype", "transformer_dtype", "diffusion_model_dtype", "guidance",
               "cache_text_embeddings"}  # fmt: skip
_T_SAMPLING = {"timestep_sample_method", "sigmoid_scale", "shift", "flux_shift"}
MODEL_KEYS_READ: dict[str, frozenset[str]] = {
    "flux": frozenset(
        _ALL_MODELS
        | _T_SAMPLING
        | {"diffusers_path", "transformer_path", "bypass_guidance_embedding"}
    ),
    "sdxl": frozenset(
        _ALL_MODELS
        | {
            "checkpoint_path",
            "v_pred",
            "min_snr_gamma",
            "debiased_estimation_loss",
            "unet_lr",
            "text_encoder_1_lr",
            "text_encoder_2_lr",
        }
    ),
    "wan": frozenset(
        _ALL_MODELS
        | _T_SAMPLING
        | {"ckpt_path", "transformer_path", "llm_path", "text_encoder_fp8", "min_t", "max_t"}
    ),
    "qwen_image": frozenset(
        _ALL_MODELS
        | _T_SAMPLING
        | {"diffusers_path", "transformer_path", "text_encoder_path", "vae_path"}
    ),
    "z_image": frozenset(
        _ALL_MODELS | _T_SAMPLING | {"diffusion_model", "vae", "text_encoders", "merge_adapters"}
    ),
}
MODEL_KEYS_REQUIRED: dict[str, frozenset[str]] = {
    "flux": frozenset({"type", "dtype", "diffusers_path"}),
    "sdxl": frozenset({"type", "dtype", "checkpoint_path"}),
    "wan": frozenset({"type", "dtype", "ckpt_path"}),
    "qwen_image": frozenset({"type", "dtype", "diffusers_path"}),
    "z_image": frozenset({"type", "dtype", "diffusion_model", "vae", "text_encoders"}),
}
ADAPTER_KEYS_READ = frozenset(
    {"type", "rank", "dtype", "dropout", "init_from_existing", "exclude_modules", "fuse_adapters",
     "decompose_factor", "rank_dropout"}
)  # fmt: skip
DATASET_KEYS_READ = frozenset(
    {
        "directory", "resolutions", "enable_ar_bucket", "size_buckets", "min_ar", "max_ar",
        "num_ar_buckets", "ar_buckets", "frame_buckets", "cache_shuffle_num",
        "cache_shuffle_delimiter", "skip_empty_caption", "online_captions", "shuffle_tags",
        "caption_prefix", "num_repeats", "shuffle_metadata", "subsample_ratio",
    }
)  # fmt: skip
DIRECTORY_KEYS_READ = frozenset(
    {
        "path", "num_repeats", "mask_path", "control_path", "default_mask_file",
        "enable_ar_bucket", "size_buckets", "resolutions", "ar_buckets", "min_ar", "max_ar",
        "num_ar_buckets", "frame_buckets", "cache_shuffle_num", "cache_shuffle_delimiter",
        "skip_empty_caption", "online_captions", "shuffle_tags", "caption_prefix",
        "shuffle_metadata",
    }
)  # fmt: skip

# -- what loraq must write ----------------------------------------------------------------------
EXPECTED_MODEL: dict[str, dict[str, Any]] = {
    "flux": {
        "type": "flux",
        "diffusers_path": "/var/lib/loraq/models/flux/FLUX.1-dev",
        "dtype": "bfloat16",
        "transformer_dtype": "float8",
        "flux_shift": True,
    },
    "sdxl": {
        "type": "sdxl",
        "checkpoint_path": (
            "/var/lib/loraq/models/sdxl/stable-diffusion-xl-base-1.0/sd_xl_base_1.0.safetensors"
        ),
        "dtype": "bfloat16",
    },
    "wan13": {
        "type": "wan",
        "ckpt_path": "/var/lib/loraq/models/wan13/Wan2.1-T2V-1.3B",
        "dtype": "bfloat16",
        "timestep_sample_method": "logit_normal",
    },
    "wan14b_t2v": {
        "type": "wan",
        "ckpt_path": "/var/lib/loraq/models/wan14b_t2v/Wan2.1-T2V-14B",
        "dtype": "bfloat16",
        "transformer_dtype": "float8",
        "timestep_sample_method": "logit_normal",
    },
    "wan14b_i2v": {
        "type": "wan",
        "ckpt_path": "/var/lib/loraq/models/wan14b_i2v/Wan2.1-I2V-14B-480P",
        "dtype": "bfloat16",
        "transformer_dtype": "float8",
        "timestep_sample_method": "logit_normal",
    },
    "qwen": {
        "type": "qwen_image",
        "diffusers_path": "/var/lib/loraq/models/qwen/Qwen-Image",
        "dtype": "bfloat16",
        "transformer_dtype": "float8",
        "timestep_sample_method": "logit_normal",
    },
    "z_image_turbo": {
        "type": "z_image",
        "diffusion_model": (
            "/var/lib/loraq/models/z_image_turbo/z_image_turbo/"
            "split_files/diffusion_models/z_image_turbo_bf16.safetensors"
        ),
        "vae": "/var/lib/loraq/models/z_image_turbo/z_image_turbo/split_files/vae/ae.safetensors",
        "text_encoders": [
            {
                "path": "/var/lib/loraq/models/z_image_turbo/z_image_turbo/"
                "split_files/text_encoders/qwen_3_4b.safetensors",
                "type": "lumina2",
            }
        ],
        "merge_adapters": [
            "/var/lib/loraq/models/z_image_turbo/zimage_turbo_training_adapter/"
            "zimage_turbo_training_adapter_v1.safetensors"
        ],
        "dtype": "bfloat16",
    },
}
EXPECTED_TOP_LEVEL: dict[str, Any] = {
    "output_dir": "/var/lib/loraq/jobs/golden/output",
    "dataset": "/var/lib/loraq/jobs/golden/config/dataset.toml",
    "epochs": 100,
    "micro_batch_size_per_gpu": 1,
    "pipeline_stages": 1,
    "gradient_accumulation_steps": 4,
    "gradient_clipping": 1.0,
    "warmup_steps": 100,
    "save_every_n_epochs": 10,
    "checkpoint_every_n_minutes": 120,
    "activation_checkpointing": True,
    "partition_method": "parameters",
    "save_dtype": "bfloat16",
    "caching_batch_size": 1,
    "steps_per_print": 1,
    "video_clip_mode": "single_middle",
}
EXPECTED_ADAPTER = {"type": "lora", "rank": 32, "dtype": "bfloat16"}
EXPECTED_OPTIMIZER = {
    "type": "adamw_optimi",
    "lr": 2e-5,
    "betas": [0.9, 0.99],
    "weight_decay": 0.01,
    "eps": 1e-8,
}

IMAGES_DIR = {"path": "/var/lib/loraq/jobs/golden/dataset/images", "num_repeats": 1}
VIDEOS_DIR = {"path": "/var/lib/loraq/jobs/golden/dataset/videos", "num_repeats": 5}
DATASETS: dict[str, tuple[dict[str, str], list[dict[str, Any]]]] = {
    "images": ({"type": "images", "images_url": "https://x.test/i.zip"}, [IMAGES_DIR]),
    "videos": ({"type": "videos", "videos_url": "https://x.test/v.zip"}, [VIDEOS_DIR]),
    "both": (
        {
            "type": "both",
            "images_url": "https://x.test/i.zip",
            "videos_url": "https://x.test/v.zip",
        },
        [IMAGES_DIR, VIDEOS_DIR],
    ),
    "precaptioned": ({"type": "precaptioned", "images_url": "https://x.test/i.zip"}, [IMAGES_DIR]),
    "precaptioned_videos": (
        {"type": "precaptioned", "videos_url": "https://x.test/v.zip"},
        [VIDEOS_DIR],
    ),
}
IMAGE_ONLY = {"images", "precaptioned"}
ALLOWED: dict[str, set[str]] = {
    "flux": IMAGE_ONLY,
    "sdxl": IMAGE_ONLY,
    "qwen": IMAGE_ONLY,
    "z_image_turbo": IMAGE_ONLY,
    "wan13": set(DATASETS),
    "wan14b_t2v": set(DATASETS),
    "wan14b_i2v": {"videos", "precaptioned_videos"},
}
VIDEO_MODELS = {"wan13", "wan14b_t2v", "wan14b_i2v"}
REAL_TYPES = sorted(EXPECTED_MODEL)
CASES = [(m, d) for m in REAL_TYPES for d in DATASETS]


def _job(model_type: str, dataset: str, **training: Any) -> JobInput:
    body = {
        "input": {
            "model_type": model_type,
            "dataset": DATASETS[dataset][0],
            "training": training,
            "output": {"method": "local"},  # a method every worker has: only media rules apply
            # Videos to caption need a Gemini key (checked by preflight); these tests are
            # about the media rules, so every job carries one.
            "api_keys": {"gemini_api_key": "AIzaGoldenTestKey"},
        }
    }
    return JobRequest.model_validate(body).input


def _configs(request: JobInput) -> tuple[dict[str, Any], dict[str, Any]]:
    configs = build_configs(request, JobPaths(JOB), MODELS / request.model_type.value, {})
    return configs.train, configs.dataset


def test_every_real_model_type_has_a_golden_table() -> None:
    """GIVEN the model types WHEN listed THEN every one but tiny is covered here."""
    assert set(REAL_TYPES) == {t.value for t in ModelType} - {"tiny"}


@pytest.mark.parametrize(("model_type", "dataset"), CASES)
def test_allowed_combinations_pass_preflight_and_others_name_the_field(
    model_type: str, dataset: str
) -> None:
    """GIVEN a model and a dataset type WHEN preflight runs THEN only the allowed pairs pass."""
    request = _job(model_type, dataset)
    if dataset in ALLOWED[model_type]:
        preflight(request)
        return
    with pytest.raises(Permanent) as refused:
        preflight(request)
    assert refused.value.field in {"dataset.videos_url", "dataset.type"}


@pytest.mark.parametrize(("model_type", "dataset"), [(m, d) for m, d in CASES if d in ALLOWED[m]])
def test_golden_train_and_dataset_toml(model_type: str, dataset: str, tmp_path: Path) -> None:
    """GIVEN an allowed model × dataset with defaults WHEN configured THEN every key is as
    expected, and diffusion-pipe reads every key loraq writes where it writes it."""
    train, data = _configs(_job(model_type, dataset))

    # Wan i2v's first frame is the conditioning image: upstream's single_beginning (issue 11).
    clip_mode = "single_beginning" if model_type == "wan14b_i2v" else "single_middle"
    assert train == {
        **EXPECTED_TOP_LEVEL,
        "video_clip_mode": clip_mode,
        "model": EXPECTED_MODEL[model_type],
        "adapter": EXPECTED_ADAPTER,
        "optimizer": EXPECTED_OPTIMIZER,
    }
    frame_buckets = [1, 33] if model_type in VIDEO_MODELS else [1]
    # Wan trains at upstream's 512 by default (the i2v model is 480P); images at 1024.
    resolution = 512 if model_type in VIDEO_MODELS else 1024
    assert data == {
        "resolutions": [resolution],
        "enable_ar_bucket": True,
        "min_ar": 0.5,
        "max_ar": 2.0,
        "num_ar_buckets": 7,
        "frame_buckets": frame_buckets,
        "directory": DATASETS[dataset][1],
    }

    kind = train["model"]["type"]
    assert TRAIN_KEYS_REQUIRED <= set(train) <= TRAIN_KEYS_READ
    assert set(train) & SAVE_KEYS, "diffusion-pipe asserts one save_every_n_* key"
    assert MODEL_KEYS_REQUIRED[kind] <= set(train["model"]) <= MODEL_KEYS_READ[kind]
    assert {"type", "rank"} <= set(train["adapter"]) <= ADAPTER_KEYS_READ
    assert "alpha" not in train["adapter"], "train.py refuses alpha"
    assert set(data) <= DATASET_KEYS_READ
    assert all(set(d) <= DIRECTORY_KEYS_READ for d in data["directory"])

    # What is written is what diffusion-pipe will read back.
    write_configs(
        build_configs(_job(model_type, dataset), JobPaths(JOB), MODELS / model_type, {}), tmp_path
    )
    assert toml.load(tmp_path / "train.toml") == train
    assert toml.load(tmp_path / "dataset.toml") == data


def test_z_image_text_encoder_is_a_table_of_path_and_type() -> None:
    """GIVEN z_image_turbo WHEN written as TOML THEN text_encoders reads back as a list of
    tables with ``path`` and ``type`` (ComfyPipeline reads te_config['path'|'paths'], ['type'])."""
    train, _ = _configs(_job("z_image_turbo", "images"))
    text = toml.dumps(train)
    encoders = toml.loads(text)["model"]["text_encoders"]
    assert encoders == [
        {"path": EXPECTED_MODEL["z_image_turbo"]["text_encoders"][0]["path"], "type": "lumina2"}
    ]
    assert isinstance(toml.loads(text)["model"]["merge_adapters"], list)


# -- pass-through keys --------------------------------------------------------------------------
MODEL_TABLE_KEYS = {
    "flux": {"sigmoid_scale": 1.2, "guidance": 3.5, "bypass_guidance_embedding": True, "shift": 3},
    "sdxl": {"min_snr_gamma": 5, "v_pred": True, "unet_lr": 4e-5, "text_encoder_1_lr": 2e-5},
    "wan13": {"min_t": 0.1, "max_t": 0.9, "text_encoder_fp8": True, "cache_text_embeddings": False},
    "qwen": {"shift": 2, "sigmoid_scale": 1.0},
    "z_image_turbo": {"diffusion_model_dtype": "float8", "timestep_sample_method": "uniform"},
}


@pytest.mark.parametrize("model_type", sorted(MODEL_TABLE_KEYS))
def test_model_keys_land_in_the_model_table_the_model_reads(model_type: str) -> None:
    """GIVEN model-specific pass-through keys WHEN configured THEN they are in [model], and
    they are keys that model's loader reads."""
    extras = MODEL_TABLE_KEYS[model_type]
    train, _ = _configs(_job(model_type, "images", **extras))
    kind = train["model"]["type"]
    for key, value in extras.items():
        assert train["model"][key] == value and key not in train
        assert key in MODEL_KEYS_READ[kind], key


def test_other_pass_through_keys_land_where_diffusion_pipe_reads_them() -> None:
    """GIVEN adapter, optimizer, dataset and unknown keys WHEN configured THEN each lands in
    its table; unknown ones at the top of train.toml."""
    extras = {
        "dropout": 0.05,
        "exclude_modules": ["proj_out"],
        "beta2_half_life": 1000,
        "gradient_release": False,
        "caption_prefix": "a photo of ",
        "skip_empty_caption": False,
        "shuffle_tags": True,
        "num_ar_buckets": 9,
        "blocks_to_swap": 20,
        "huber_delta": 0.5,
        "lr_scheduler": "linear",
        "monitoring": {"enable_wandb": False},
    }
    train, data = _configs(_job("flux", "images", **extras))
    assert train["adapter"]["dropout"] == 0.05 and train["adapter"]["exclude_modules"] == [
        "proj_out"
    ]
    assert train["optimizer"]["beta2_half_life"] == 1000
    assert train["optimizer"]["gradient_release"] is False
    assert (data["caption_prefix"], data["skip_empty_caption"]) == ("a photo of ", False)
    assert (data["shuffle_tags"], data["num_ar_buckets"]) == (True, 9)
    assert (train["blocks_to_swap"], train["huber_delta"], train["lr_scheduler"]) == (
        20,
        0.5,
        "linear",
    )
    assert train["monitoring"] == {"enable_wandb": False}
    assert set(train) <= TRAIN_KEYS_READ
    assert set(train["adapter"]) <= ADAPTER_KEYS_READ
    assert set(data) <= DATASET_KEYS_READ


@pytest.mark.parametrize(
    ("training", "field_part"),
    [
        ({"transformer_path": "/elsewhere/t.safetensors"}, "transformer_path"),
        ({"model": {"vae": "/elsewhere/vae.safetensors"}}, "model.vae"),
        ({"model": {"merge_adapters": []}}, "model.merge_adapters"),
        ({"model": {"diffusers_path": "/elsewhere"}}, "model.diffusers_path"),
    ],
)
def test_paths_loraq_provisions_cannot_be_overridden(
    training: dict[str, Any], field_part: str
) -> None:
    """GIVEN a request that points a weight path elsewhere WHEN validated THEN it is refused,
    naming the key (the weights there would never be provisioned)."""
    with pytest.raises(
        ValueError, match=f"{field_part}\n  paths on the worker are managed by loraq"
    ):
        _job("z_image_turbo", "images", **training)


def test_videos_without_a_video_frame_bucket_are_refused() -> None:
    """GIVEN Wan with videos and frame_buckets [1] WHEN preflight runs THEN it names the field:
    diffusion-pipe never puts a video in the 1-frame bucket, so every video would be dropped."""
    with pytest.raises(Permanent) as refused:
        preflight(_job("wan13", "videos", frame_buckets=[1]))
    assert refused.value.field == "training.frame_buckets"
    preflight(_job("wan13", "images", frame_buckets=[1]))


def test_multiple_clips_per_video_are_refused_up_front() -> None:
    """GIVEN videos and video_clip_mode 'multiple' WHEN preflight runs THEN unsupported on that
    field: the pinned diffusion-pipe raises NotImplementedError for it only at caching time."""
    with pytest.raises(Permanent) as refused:
        preflight(_job("wan13", "videos", video_clip_mode="multiple"))
    assert refused.value.field == "training.video_clip_mode"
    assert refused.value.code is ErrorCode.UNSUPPORTED
    preflight(_job("wan13", "images", video_clip_mode="multiple"))  # no videos: nothing to clip


def test_request_values_reach_the_files() -> None:
    """GIVEN non-default training values WHEN configured THEN each lands under its
    diffusion-pipe name (a mapping slip would leave the default in place)."""
    request = _job(
        "wan13",
        "both",
        epochs=7,
        learning_rate=1e-4,
        batch_size=2,
        gradient_accumulation_steps=3,
        lora_rank=16,
        lora_dtype="float32",
        resolution=512,
        frame_buckets=[1, 17, 33],
        video_clip_mode="multiple",
    )
    train, data = _configs(request)
    assert (train["epochs"], train["micro_batch_size_per_gpu"]) == (7, 2)
    assert train["gradient_accumulation_steps"] == 3 and train["video_clip_mode"] == "multiple"
    assert train["optimizer"]["lr"] == 1e-4
    assert train["adapter"] == {"type": "lora", "rank": 16, "dtype": "float32"}
    assert (data["resolutions"], data["frame_buckets"]) == ([512], [1, 17, 33])
