"""What a pass-through ``training`` key may carry: no path, no stray secret, bounded values.

Anyone who can send a message is a tenant. A pass-through key reaches diffusion-pipe's TOML
verbatim, so every key diffusion-pipe reads as a *path* would let a request point the trainer
at another job's files (at the pinned commit 8f83dbf, ``train.py`` line 545 joins
``resume_from_checkpoint`` onto ``output_dir`` with ``os.path.join``, which an absolute value
replaces whole; line 534 loads ``adapter.init_from_existing``; lines 437-445 read each
``eval_datasets[].config`` and line 557 copies it). loraq owns every path it hands the trainer,
so such keys are refused, at any depth, with their dotted name.

Secrets are refused too, except the one diffusion-pipe reads: ``monitoring.wandb_api_key``
(``train.py`` line 563, passed to ``wandb.login(key=...)``). That one is taken out of the
request here and travels apart (``TrainingSpec.trainer_secrets``): the TOML gets an empty
placeholder and the trainer gets ``WANDB_API_KEY`` in its environment, which ``wandb.login``
falls back to when ``key`` is empty (wandb ``sdk/wandb_login.py``: ``if key:
configure_api_key(key)``, else ``apikey.api_key(settings)`` reads the variable). Any other
secret-looking key is read by nothing upstream: refusing it beats writing it to the volume.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from contracts.toml_values import UnfaithfulToml, check_value

# Keys diffusion-pipe reads as paths, found by reading every config lookup at 8f83dbf
# (train.py, utils/dataset.py, models/*.py), besides the ``*_path``/``*_dir``/``*_file`` names.
PATH_KEYS = frozenset(
    {
        "output_dir",
        "dataset",
        "eval_datasets",
        "resume_from_checkpoint",
        "init_from_existing",
        "directory",
        "path",
        "paths",
        "config",
        "diffusion_model",
        "vae",
        "audio_vae",
        "text_encoder",
        "text_encoders",
        "merge_adapters",
        "default_mask_file",
        "dump_dataset",
    }
)
_PATH_SUFFIXES = ("_path", "_paths", "_dir", "_dirs", "_file", "_files", "_folder")
_SECRET_WORDS = ("token", "secret", "password", "passwd", "credential", "apikey")
# The one secret upstream reads, and the environment variable its library reads instead.
TRAINER_SECRETS: dict[tuple[str, ...], str] = {("monitoring", "wandb_api_key"): "WANDB_API_KEY"}

PATHS_OWNED = "paths on the worker are managed by loraq; a request cannot name one"
MAX_DEPTH = 4
MAX_STRING = 4096
MAX_LIST = 256
MAX_KEYS = 128
_INT64 = (-(2**63), 2**63 - 1)
KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Refusal:
    """A pass-through value that may not go through: where (key path) and why."""

    where: tuple[str, ...]
    reason: str


def is_path_key(key: str) -> bool:
    lowered = key.lower()
    return lowered in PATH_KEYS or lowered.endswith(_PATH_SUFFIXES)


def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return (
        lowered == "key"
        or lowered.endswith("_key")
        or any(word in lowered.replace("_", "") for word in _SECRET_WORDS)
    )


def refusals(extras: dict[str, Any]) -> Iterator[Refusal]:
    """Every reason ``extras`` (the keys under ``training`` nobody declared) cannot be used."""
    if len(extras) > MAX_KEYS:
        yield Refusal((), f"at most {MAX_KEYS} pass-through keys")
    for key, value in extras.items():
        found = list(_check(("training", key), value, 0))
        yield from found
        if not found:
            yield from _unfaithful(key, value)


def _unfaithful(key: str, value: Any) -> Iterator[Refusal]:
    """A value that passed every rule above can still not survive TOML (``"C:\\x"`` in the
    ``toml`` reader, an array of mixed types): refused here, before the job starts."""
    try:
        check_value((key,), value)
    except UnfaithfulToml as exc:
        yield Refusal(("training", *map(str, exc.where)), exc.reason)


def _check(where: tuple[str, ...], value: Any, depth: int) -> Iterator[Refusal]:
    key = where[-1]
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        yield Refusal(where, "not a valid TOML key (letters, digits and _)")
        return
    if is_path_key(key):
        yield Refusal(where, PATHS_OWNED)
        return
    if is_secret_key(key):
        if where[1:] not in TRAINER_SECRETS:
            yield Refusal(
                where,
                "looks like a secret, and diffusion-pipe reads no such key (the one it reads "
                "is training.monitoring.wandb_api_key)",
            )
        elif not isinstance(value, str) or not value:
            yield Refusal(where, "must be a non-empty string")
        return
    if depth > MAX_DEPTH:
        yield Refusal(where, f"nested more than {MAX_DEPTH} levels deep")
        return
    yield from _check_value(where, value, depth)


def _check_value(where: tuple[str, ...], value: Any, depth: int) -> Iterator[Refusal]:
    if isinstance(value, list):
        yield from _check_list(where, value, depth)
    elif isinstance(value, dict):
        if len(value) > MAX_KEYS:
            yield Refusal(where, f"at most {MAX_KEYS} keys")
            return
        for sub_key, item in value.items():
            yield from _check((*where, sub_key), item, depth + 1)
    elif (problem := _scalar_problem(value)) is not None:
        yield Refusal(where, problem)


def _check_list(where: tuple[str, ...], value: list[Any], depth: int) -> Iterator[Refusal]:
    if depth > MAX_DEPTH:
        yield Refusal(where, f"nested more than {MAX_DEPTH} levels deep")
        return
    if len(value) > MAX_LIST:
        yield Refusal(where, f"at most {MAX_LIST} items")
        return
    for item in value:
        if isinstance(item, dict):
            yield Refusal(where, "lists of tables are not passed through")
            return
        yield from _check_value(where, item, depth + 1)


def _scalar_problem(value: Any) -> str | None:
    if value is None:
        return "null is not allowed (omit the key instead)"
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        in_range = _INT64[0] <= value <= _INT64[1]
        return None if in_range else "integer out of the 64-bit range TOML allows"
    if isinstance(value, float):
        return None if math.isfinite(value) else "must be a finite number"
    if isinstance(value, str):
        return string_problem(value, MAX_STRING)
    return "unsupported value type"


def string_problem(value: str, max_length: int, *, one_line: bool = True) -> str | None:
    """Why a string cannot be used as given, or None: too long, or holds control characters.

    Control characters (C0, DEL, C1) and line/paragraph separators corrupt captions and
    configs and hide text in logs; tab is allowed unless ``one_line``.
    """
    if len(value) > max_length:
        return f"at most {max_length} characters"
    for char in value:
        if is_control_char(char) and not (char == "\t" and not one_line):
            return f"control or line-separator character U+{ord(char):04X} is not allowed"
    return None


def is_control_char(char: str) -> bool:
    """C0/C1 controls, lone surrogates, line/paragraph separators, bidirectional overrides."""
    return unicodedata.category(char) in _CONTROL_CATEGORIES or char in _BIDI_CONTROLS


_CONTROL_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
# Bidirectional overrides and isolates: they reorder text on display (CVE-2021-42574).
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def take_secrets(extras: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``extras`` without the trainer's secrets, and those secrets by environment variable."""
    cleaned = {key: value for key, value in extras.items()}
    secrets: dict[str, str] = {}
    for where, variable in TRAINER_SECRETS.items():
        table = cleaned.get(where[0])
        value = table.get(where[1]) if isinstance(table, dict) else None
        if isinstance(table, dict) and isinstance(value, str) and value:
            table = dict(table)
            secrets[variable] = value
            del table[where[1]]
            cleaned[where[0]] = table
    return cleaned, secrets
