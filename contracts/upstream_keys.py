"""Which pass-through ``training`` keys the request's trainer reads, from a committed facts file.

A key nobody reads used to land at the top of ``train.toml`` and train with the default
(``learning_rte`` for ``learning_rate``), hours of GPU time later. ``data/upstream_keys.json``
lists every key diffusion-pipe reads at the pinned commit, per table and per model, with
``file:line`` sources, and the keys loraq's tiny trainer reads; its ``upstream.how`` says how it
was read. The request is checked against it when it is parsed (``JobInput`` in
``contracts/request.py``), and ``stages/configure.py`` routes each key by the same tables, so
the check and the TOML cannot disagree.

Where a key lands when it is sent flat (``training.flux_shift``): in the one table of
``FLAT_TABLES`` that reads it. A key read by two (``dtype``: ``[model]`` and ``[adapter]``) has
to be sent inside its table (``training.model.dtype``).
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable
from functools import cache
from importlib import resources
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

FACTS_FILE = "upstream_keys.json"
TableName = Literal[
    "train", "model", "adapter", "optimizer", "monitoring", "lora", "dataset", "directory"
]
# Tables a request may send whole, as an object under their own name (``training.model``).
NAMED_TABLES: frozenset[str] = frozenset({"model", "adapter", "optimizer", "monitoring"})
# Where a flat key may land: the tops of train.toml and dataset.toml and three tables. Not
# [monitoring] (its one secret travels by its nested name) and not [[directory]] (loraq writes
# those, and lists of tables are never passed through).
FLAT_TABLES: tuple[TableName, ...] = ("train", "model", "adapter", "optimizer", "dataset")
_SUGGESTIONS = 3


class _Fact(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class KeyFact(_Fact):
    """One key of one table: who reads it (with an effect) and where."""

    read_by: tuple[str, ...]
    sources: tuple[str, ...] = Field(min_length=1)
    path: bool = False
    # Read, but doing nothing under loraq (``regenerate_cache``, the lokr-only adapter keys).
    no_effect: str | None = None
    # Keys of the same role under another name in other models (transformer_dtype for z_image).
    same_role_as: tuple[str, ...] = ()
    note: str | None = None


class TableFacts(_Fact):
    where: str
    keys: dict[str, KeyFact]


class OptimizerFacts(_Fact):
    """The class ``[optimizer] type`` selects and the keyword arguments it takes."""

    class_name: str = Field(alias="class")
    selected_at: str
    kwargs: tuple[str, ...] = Field(min_length=1)
    kwargs_from: str
    note: str | None = None


class Reader(_Fact):
    """Who reads a model type's TOML: the trainer and the ``[model] type`` it dispatches on."""

    trainer: Literal["diffusion-pipe", "tiny"]
    type: str


class UpstreamSource(_Fact):
    repository: str
    commit: str = Field(pattern=r"^[0-9a-f]{40}$")
    how: str


class UpstreamKeys(_Fact):
    about: str
    upstream: UpstreamSource
    model_types: dict[str, Reader]
    tables: dict[str, TableFacts]
    optimizer_types: dict[str, dict[str, OptimizerFacts]]

    @model_validator(mode="after")
    def _every_table(self) -> UpstreamKeys:
        if set(self.tables) != set(get_args(TableName)):
            raise ValueError(f"tables must be exactly {get_args(TableName)}")
        return self


@cache
def facts() -> UpstreamKeys:
    """The facts file, parsed once; it is package data (``pyproject.toml`` ships data/*.json)."""
    text = resources.files("contracts").joinpath("data", FACTS_FILE).read_text(encoding="utf-8")
    return UpstreamKeys.model_validate_json(text)


def reader(model_type: str) -> Reader:
    return facts().model_types[model_type]


def reader_of(upstream_type: str) -> Reader:
    """The reader of a written ``train.toml``, from its ``[model] type``."""
    for found in facts().model_types.values():
        if found.type == upstream_type:
            return found
    raise KeyError(upstream_type)


def optimizer_kwargs(who: Reader, optimizer_type: str) -> frozenset[str] | None:
    """The kwargs of the optimizer class, or None where the facts cannot know them (diffusion-pipe
    looks any other name up in ``pytorch_optimizer`` at run time, train.py:698-700)."""
    # train.py:656 and the tiny trainer both compare the lower-cased name.
    found = facts().optimizer_types[who.trainer].get(optimizer_type.lower())
    return None if found is None else frozenset(found.kwargs)


def fact(table: str, key: str) -> KeyFact | None:
    found = facts().tables.get(table)
    return None if found is None else found.keys.get(key)


def reads(who: Reader, optimizer_type: str, table: str, key: str) -> bool:
    """Whether ``who`` reads ``key`` in ``table`` and it has an effect there."""
    found = fact(table, key)
    if found is not None and who.type in found.read_by and found.no_effect is None:
        return True
    if table == "optimizer":
        return key in (optimizer_kwargs(who, optimizer_type) or ())
    return False


def flat_tables(who: Reader, optimizer_type: str, key: str) -> list[TableName]:
    """The tables in which a flat ``training.<key>`` would be read: route it when there is one."""
    return [table for table in FLAT_TABLES if reads(who, optimizer_type, table, key)]


def unread_reason(
    model_type: str,
    optimizer_type: str,
    where: tuple[str, ...],
    *,
    candidates: Iterable[str] = (),
    refused: Collection[str] = (),
) -> str:
    """Why ``where`` (``(key,)`` flat, ``(table, key)`` inside a named table) is read by nobody
    for ``model_type``, with a did-you-mean.

    ``candidates`` are more names a flat key may mean (loraq's own declared fields); ``refused``
    are dotted names loraq refuses anyway (``optimizer.lr``), never suggested.
    """
    who = reader(model_type)
    table, key = (where[0], where[1]) if len(where) == 2 else (None, where[0])
    tables: tuple[str, ...] = (table,) if table else FLAT_TABLES
    for name in tables:
        found = fact(name, key)
        if found is not None and found.no_effect and who.type in found.read_by:
            return f"has no effect: {found.no_effect}"
    others = _other_model_types(who, tables, key)
    hint = _did_you_mean(who, optimizer_type, table, key, candidates, refused)
    if others:
        return f"model type '{model_type}' does not read it (model types that do: {others}){hint}"
    subject = "the tiny trainer" if who.trainer == "tiny" else "diffusion-pipe"
    place = f"[{table}] key" if table else "such key"
    message = f"unknown key: {subject} reads no {place} for model type '{model_type}'{hint}"
    if table in (None, "optimizer") and (takers := _optimizers_taking(who, key)):
        return f"{message} (optimizer types that take it: {takers})"
    if table == "optimizer" or optimizer_kwargs(who, optimizer_type) is not None:
        return message
    # Arguments of an optimizer the facts cannot list are accepted inside training.optimizer.
    return f"{message} (an argument of optimizer '{optimizer_type}' goes in training.optimizer)"


def _optimizers_taking(who: Reader, key: str) -> str:
    types = facts().optimizer_types[who.trainer]
    return ", ".join(name for name, found in types.items() if key in found.kwargs)


def _other_model_types(who: Reader, tables: Iterable[str], key: str) -> str:
    upstream = {
        reader_type
        for name in tables
        if (found := fact(name, key)) is not None and found.no_effect is None
        for reader_type in found.read_by
    } - {who.type}
    names = [name for name, other in facts().model_types.items() if other.type in upstream]
    return ", ".join(names)


def _did_you_mean(
    who: Reader,
    optimizer_type: str,
    table: str | None,
    key: str,
    candidates: Iterable[str],
    refused: Collection[str],
) -> str:
    if table is None and reads(who, optimizer_type, "monitoring", key):
        return f"; did you mean 'training.monitoring.{key}'?"
    if table is not None:
        moved = [name for name in FLAT_TABLES if reads(who, optimizer_type, name, key)]
        if moved:
            inside = "" if moved[0] in ("train", "dataset") else f"{moved[0]}."
            return f"; did you mean 'training.{inside}{key}'?"
    names = _names_read(who, optimizer_type, table, refused)
    # A counterpart comes first: difflib finds diffusion_model_dtype no closer than 0.47 to
    # transformer_dtype, under its cutoff, though it is the same setting for z_image.
    counterparts = [name for name in names if key in _same_role(table, name)]
    pool = sorted({*names, *(() if table else candidates)})
    close = counterparts + [
        name for name in difflib.get_close_matches(key, pool, n=_SUGGESTIONS) if name != key
    ]
    close = list(dict.fromkeys(close))[:_SUGGESTIONS]
    if not close:
        return ""
    return "; did you mean " + " or ".join(f"'{name}'" for name in close) + "?"


def _names_read(
    who: Reader, optimizer_type: str, table: str | None, refused: Collection[str]
) -> list[str]:
    """Every key ``who`` reads in ``table`` (all flat tables when None) that a request may send."""
    names: set[str] = set()
    for name in (table,) if table else FLAT_TABLES:
        known = set(facts().tables[name].keys)
        if name == "optimizer":
            known |= optimizer_kwargs(who, optimizer_type) or frozenset()
        for key in known:
            found = fact(name, key)
            if (found is not None and found.path) or f"{name}.{key}" in refused:
                continue
            if reads(who, optimizer_type, name, key):
                names.add(key)
    return sorted(names)


def _same_role(table: str | None, key: str) -> tuple[str, ...]:
    for name in (table,) if table else FLAT_TABLES:
        found = fact(name, key)
        if found is not None:
            return found.same_role_as
    return ()
