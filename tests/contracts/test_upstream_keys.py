"""Pass-through keys checked against what the trainer reads (issue 11, item 8: typos train).

``contracts/data/upstream_keys.json`` records the keys diffusion-pipe reads at the pinned
commit. CI has no copy of diffusion-pipe, so these tests check the file's shape and a few facts
read by hand from the source, the tiny trainer's entries against loraq's own code, and that
every documented pass-through example still parses.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest

from consumer.messages import Rejection, parse_request
from contracts.enums import ErrorCode, ModelType
from contracts.pass_through import PATHS_OWNED, is_secret_key
from contracts.request import JobRequest, TrainingSpec
from contracts.upstream_keys import FLAT_TABLES, facts, flat_tables, reader

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_TYPES = {"flux", "sdxl", "wan", "qwen_image", "z_image", "tiny"}
DECLARED = set(TrainingSpec.model_fields)


def _body(model_type: str, training: dict[str, Any]) -> dict[str, Any]:
    return {
        "input": {
            "job_id": "keys",
            "model_type": model_type,
            "dataset": {"type": "precaptioned", "images_url": "https://example.com/d.zip"},
            "training": training,
        }
    }


def _reject(model_type: str, training: dict[str, Any]) -> Rejection:
    result = parse_request(json.dumps(_body(model_type, training)), "message-1")
    assert isinstance(result, Rejection), f"accepted: {training}"
    assert result.code is ErrorCode.INVALID_REQUEST
    return result


def _accepts(model_type: str, training: dict[str, Any]) -> bool:
    result = parse_request(json.dumps(_body(model_type, training)), "message-1")
    return not isinstance(result, Rejection)


# -- refusals ------------------------------------------------------------------------------------


def test_a_typo_is_refused_on_its_field_with_a_did_you_mean() -> None:
    """GIVEN ``learning_rte`` (it trained at the default rate) WHEN parsed THEN it is refused on
    ``input.training.learning_rte``, suggesting the declared field ``learning_rate``."""
    rejection = _reject("flux", {"learning_rte": 1e-4})
    assert rejection.field == "input.training.learning_rte"
    assert "unknown key" in rejection.message
    assert "did you mean 'learning_rate'?" in rejection.message


@pytest.mark.parametrize(
    ("training", "field"),
    [
        ({"transformer_dtype": "float8"}, "input.training.transformer_dtype"),
        ({"model": {"transformer_dtype": "float8"}}, "input.training.model.transformer_dtype"),
    ],
)
def test_a_key_of_another_model_is_refused_naming_who_reads_it(
    training: dict[str, Any], field: str
) -> None:
    """GIVEN ``transformer_dtype`` for z_image (finding 5: its pipeline reads
    ``diffusion_model_dtype``) WHEN parsed THEN refused, naming the model types that read it
    and suggesting z_image's own key, flat or inside ``training.model``."""
    rejection = _reject("z_image_turbo", training)
    assert rejection.field == field
    assert "model type 'z_image_turbo' does not read it" in rejection.message
    assert "flux" in rejection.message and "qwen" in rejection.message
    assert "did you mean 'diffusion_model_dtype'?" in rejection.message


def test_the_counterpart_is_accepted_and_routed_to_model() -> None:
    who = reader("z_image_turbo")
    assert flat_tables(who, "adamw_optimi", "diffusion_model_dtype") == ["model"]
    assert _accepts("z_image_turbo", {"diffusion_model_dtype": "bfloat16"})


@pytest.mark.parametrize(
    ("model_type", "training", "field", "says"),
    [
        ("flux", {"model": {"flux_shfit": True}}, "model.flux_shfit", "did you mean 'flux_shift'"),
        ("flux", {"epoch": 3}, "epoch", "did you mean 'epochs'"),
        ("tiny", {"min_snr_gamma": 5}, "min_snr_gamma", "model types that do: sdxl"),
        ("sdxl", {"adapter": {"exclude_modules": "x"}}, "adapter.exclude_modules", "does not"),
        ("flux", {"model": {"dropout": 0.1}}, "model.dropout", "'training.adapter.dropout'"),
        ("flux", {"enable_wandb": True}, "enable_wandb", "'training.monitoring.enable_wandb'"),
        ("flux", {"momentum": 0.9}, "momentum", "optimizer types that take it: sgd"),
        ("flux", {"optimizer": {"momentum": 0.9}}, "optimizer.momentum", "take it: sgd"),
        ("flux", {"regenerate_cache": True}, "regenerate_cache", "has no effect"),
        ("flux", {"eval_every_n_epochs": 2}, "eval_every_n_epochs", "eval_datasets"),
        ("flux", {"adapter": {"rank_dropout": 0.1}}, "adapter.rank_dropout", "'lokr'"),
        ("flux", {"evaluation": {"every": 2}}, "evaluation", "unknown key"),
        ("flux", {"dtype": "float32"}, "dtype", "training.model.dtype or training.adapter"),
        ("flux", {"lr": 1e-4}, "lr", "use training.learning_rate"),
        ("flux", {"optimizer": {"weight_decay": 5}}, "optimizer.weight_decay", "use training."),
        ("flux", {"num_repeats": 3}, "num_repeats", "use dataset.image_repeats"),
        ("flux", {"fuse_adapters": []}, "fuse_adapters", PATHS_OWNED),
        ("flux", {"seed": 3}, "seed", "model types that do: tiny"),
        ("tiny", {"shuffle_tags": True}, "shuffle_tags", "model type 'tiny' does not read it"),
        ("flux", {"optimizer_type": "prodigy", "d_coef": 2}, "d_coef", "training.optimizer"),
    ],
)
def test_each_unread_key_is_refused_on_its_field_saying_why(
    model_type: str, training: dict[str, Any], field: str, says: str
) -> None:
    """GIVEN a key the model's trainer does not read (or reads to no effect, or in two tables,
    or that loraq sets from a declared field) WHEN parsed THEN it is refused on its field."""
    rejection = _reject(model_type, training)
    assert rejection.field == f"input.training.{field}"
    assert says in rejection.message


@pytest.mark.parametrize(
    ("model_type", "training"),
    [
        ("flux", {"optimizer_type": "sgd", "momentum": 0.9}),
        ("flux", {"optimizer_type": "prodigy", "optimizer": {"d_coef": 2}}),
        ("flux", {"optimizer_type": "AdamW", "optimizer": {"amsgrad": True}}),
        ("flux", {"micro_batch_size_per_gpu": [[512, 4], [1024, 1]], "blocks_to_swap": 4}),
        ("tiny", {"seed": 3, "max_steps": 2, "model": {"width": 32, "num_threads": 2}}),
        ("wan13", {"shuffle_tags": True, "caption_prefix": "a ", "min_t": 0.1}),
        ("sdxl", {"min_snr_gamma": 5, "model": {"v_pred": True}, "unet_lr": 1e-4}),
        ("qwen", {"monitoring": {"enable_wandb": False, "wandb_run_name": "r"}}),
    ],
)
def test_keys_the_model_reads_are_accepted(model_type: str, training: dict[str, Any]) -> None:
    assert _accepts(model_type, training)


# -- nothing the trainer reads is refused ---------------------------------------------------------


def _sendable_flat_keys() -> list[tuple[str, str]]:
    """Every (model type, flat key) the facts route to exactly one table, less those refused by
    other rules: declared fields, paths, secret-looking names, loraq's own keys."""
    owned = {"lr", "betas", "weight_decay", "eps", "rank", "type", "alpha", "num_repeats"}
    cases = []
    for model_type in ModelType:
        who = reader(model_type)
        for table in FLAT_TABLES:
            for key, found in facts().tables[table].keys.items():
                if who.type not in found.read_by or found.no_effect or found.path:
                    continue
                if key in DECLARED | owned or is_secret_key(key):
                    continue
                if len(flat_tables(who, "adamw_optimi", key)) == 1:
                    cases.append((model_type.value, key))
    return cases


@pytest.mark.parametrize(("model_type", "key"), _sendable_flat_keys())
def test_every_key_a_model_reads_is_accepted_flat(model_type: str, key: str) -> None:
    """GIVEN any key the facts say the model reads in one table WHEN sent flat THEN accepted
    (the check never refuses what the trainer would use)."""
    assert _accepts(model_type, {key: 1})


def test_every_path_in_the_facts_is_refused() -> None:
    """GIVEN each key the facts mark as a path WHEN a model that reads it gets it THEN refused
    as a path (contracts/pass_through.py refuses most by name; the facts catch the rest)."""
    for table in ("train", "model", "adapter", "dataset"):
        for key, found in facts().tables[table].keys.items():
            if not found.path:
                continue
            model_type = next(
                name for name, who in facts().model_types.items() if who.type in found.read_by
            )
            flat = table in ("train", "dataset")
            rejection = _reject(model_type, {key: "x"} if flat else {table: {key: "x"}})
            assert rejection.field == f"input.training.{key if flat else f'{table}.{key}'}"
            # ``dataset`` has its own reason: loraq generates that file.
            assert rejection.message.endswith((PATHS_OWNED, "generated by loraq from 'dataset'"))


# -- the documented examples ----------------------------------------------------------------------


def _doc_bodies() -> list[dict[str, Any]]:
    text = (ROOT / "docs" / "request.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, flags=re.S)
    bodies = [json.loads(block) for block in blocks]
    return [body for body in bodies if isinstance(body, dict) and "input" in body]


def test_the_documented_bodies_and_pass_through_example_parse() -> None:
    """GIVEN docs/request.md's complete bodies and its pass-through example WHEN parsed THEN
    each is accepted."""
    bodies = _doc_bodies()
    assert len(bodies) >= 2
    example = {
        "epochs": 20,
        "sigmoid_scale": 1.5,
        "dropout": 0.05,
        "shuffle_tags": True,
        "monitoring": {"enable_wandb": False},
    }
    bodies.append(_body("flux", example))
    bodies.append(_body("flux", {"transformer_dtype": "bfloat16"}))
    for body in bodies:
        JobRequest.model_validate(body)


@pytest.mark.parametrize("path", sorted((ROOT / "tests/fixtures/requests").glob("*.json")))
def test_the_seed_bodies_parse(path: Path) -> None:
    JobRequest.model_validate_json(path.read_text())


# -- the facts file --------------------------------------------------------------------------------


def test_the_facts_were_read_at_the_commit_the_image_builds() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    pinned = re.search(r"^ARG DIFFUSION_PIPE_COMMIT=([0-9a-f]{40})$", dockerfile, flags=re.M)
    assert pinned is not None
    assert facts().upstream.commit == pinned.group(1)


def test_the_facts_cover_every_model_type_and_cite_every_key() -> None:
    """GIVEN the facts file WHEN loaded THEN every model type maps to a reader, every key names
    only known readers, and every source is ``file.py:line`` upstream or ``loraq:file::name``."""
    assert set(facts().model_types) == {m.value for m in ModelType}
    assert {who.type for who in facts().model_types.values()} == UPSTREAM_TYPES
    for table in facts().tables.values():
        for key, found in table.keys.items():
            assert set(found.read_by) <= UPSTREAM_TYPES, key
            for source in found.sources:
                assert re.fullmatch(r"[\w/]+\.py:\d+|loraq:[\w/]+\.py::\w+", source), source
    for types in facts().optimizer_types.values():
        for found in types.values():
            assert "lr" in found.kwargs


@pytest.mark.parametrize(
    ("table", "key", "read_by"),
    [
        ("model", "transformer_dtype", {"flux", "qwen_image", "wan"}),
        ("model", "diffusion_model_dtype", {"z_image"}),
        ("model", "min_snr_gamma", {"sdxl"}),
        ("model", "guidance", {"flux"}),
        ("model", "flux_shift", {"flux", "qwen_image", "wan", "z_image"}),
        ("adapter", "exclude_modules", {"flux", "qwen_image", "wan", "z_image"}),
        ("train", "huber_delta", {"flux", "qwen_image", "wan", "z_image"}),
        ("train", "seed", {"tiny"}),
        ("dataset", "shuffle_tags", {"flux", "qwen_image", "sdxl", "wan", "z_image"}),
        ("monitoring", "wandb_api_key", UPSTREAM_TYPES),
    ],
)
def test_facts_read_by_hand_from_the_source(table: str, key: str, read_by: set[str]) -> None:
    """Spot checks read from diffusion-pipe at 8f83dbf: models/flux.py:172, models/base.py:664,
    models/sdxl.py:375, models/flux.py:373, models/base.py:283 (sdxl's own configure_adapter
    passes no exclude_modules), models/base.py:424 (sdxl overrides get_loss_fn), train.py:563."""
    assert set(facts().tables[table].keys[key].read_by) == read_by


def test_facts_of_no_effect_and_optimizer_arguments() -> None:
    tables = facts().tables
    assert "train.py:307" in tables["train"].keys["regenerate_cache"].sources
    assert tables["train"].keys["regenerate_cache"].no_effect
    assert tables["model"].keys["diffusion_model_dtype"].same_role_as == ("transformer_dtype",)
    assert tables["train"].keys["resume_from_checkpoint"].path
    optimi = facts().optimizer_types["diffusion-pipe"]["adamw_optimi"]
    assert {"kahan_sum", "decouple_lr", "betas", "eps"} <= set(optimi.kwargs)
    assert "betas" not in facts().optimizer_types["diffusion-pipe"]["sgd"].kwargs


def _definition_source(path: str, name: str) -> str:
    source = (ROOT / path).read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == name:
            segment = ast.get_source_segment(source, node)
            assert segment is not None
            return segment
    raise AssertionError(f"{path} defines no {name}")


def test_the_tiny_trainers_facts_name_code_that_reads_them() -> None:
    """GIVEN each key the facts say loraq's tiny trainer reads WHEN its cited function or class
    is read THEN the key's name is in it (loraq's own code is here to check, unlike upstream)."""
    for table in facts().tables.values():
        for key, found in table.keys.items():
            for source in found.sources:
                if source.startswith("loraq:"):
                    path, name = source.removeprefix("loraq:").split("::")
                    assert key in _definition_source(path, name), source
