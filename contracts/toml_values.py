"""TOML that reads back exactly as it was meant, by both parsers that will read it.

It lives in ``contracts`` so that a request is refused when it arrives, not after its dataset
has been fetched and captioned; ``stages/configure.py`` writes every config with :func:`dumps`.

The ``toml`` package (0.10.2, the one the project was specified with) corrupts strings when it
writes them: ``"\\x41 "`` comes back as ``"A "``, ``"bell\\u0007end"`` as ``"bellx07end"``,
``"C:\\x"`` is written as TOML no parser accepts, and ``"\\x00"`` raises ``IndexError`` inside
``toml.dumps``. Its encoder has been unmaintained since 2020, so loraq writes with ``tomli-w``
(the writer paired with the standard library's ``tomllib``) and reads every document back with
``tomllib`` *and* with ``toml.loads``: diffusion-pipe and ``tiny`` read their configs with
``toml.load`` (diffusion-pipe's train.py at 8f83dbf), whose parser has its own limits (it
refuses arrays of mixed types, for one). A value either survives both readers unchanged or is
refused by key, before any trainer launches.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

import toml
import tomli_w

_READERS: tuple[tuple[str, Callable[[str], dict[str, Any]]], ...] = (
    ("tomllib", tomllib.loads),
    ("toml", toml.loads),
)


Path = tuple[str | int, ...]


class UnfaithfulToml(ValueError):
    """A value that would not reach the trainer as written, at ``where`` (keys and indexes)."""

    def __init__(self, where: Path, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"{self.key or '(document)'}: {reason}")

    @property
    def key(self) -> str:
        """The dotted path: ``model.shift``, ``betas[1]``."""
        return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.where).lstrip(".")


def dumps(document: Mapping[str, Any]) -> str:
    """The document as TOML, verified to read back identical; raises :class:`UnfaithfulToml`."""
    for key, value in document.items():
        check_value((str(key),), value)
    text = _write(document, ())
    for name, read in _READERS:
        try:
            back = read(text)
        except Exception as exc:  # each parser raises its own types (and IndexError, ValueError)
            raise UnfaithfulToml((), f"{name} cannot read the written config: {exc}") from exc
        difference = first_difference(dict(document), back)
        if difference is not None:
            raise UnfaithfulToml(difference, f"{name} reads back a different value")
    return text


def check_value(key: Path, value: Any) -> None:
    """Refuse the first part of ``value`` (at path ``key``) that would not round-trip on its own.

    Checking each leaf in a one-line document of its own names the exact key at fault, which a
    failed parse of the whole file cannot.
    """
    if isinstance(value, Mapping):
        for name, item in value.items():
            check_value((*key, str(name)), item)
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            check_value((*key, index), item)
    elif isinstance(value, float) and not math.isfinite(value):
        raise UnfaithfulToml(key, "must be a finite number")
    _round_trip(key, value)  # a whole array too: toml refuses one whose items differ in type


def _round_trip(where: Path, value: Any) -> None:
    text = _write({"v": value}, where)
    for name, read in _READERS:
        try:
            back = read(text).get("v")
        except Exception as exc:
            raise UnfaithfulToml(where, f"{name} cannot read it back ({exc})") from exc
        if first_difference(value, back) is not None:
            raise UnfaithfulToml(where, f"{name} reads it back as {back!r}, not as written")


def _write(document: Mapping[str, Any], where: Path) -> str:
    try:
        return tomli_w.dumps(document)
    except (TypeError, ValueError) as exc:
        raise UnfaithfulToml(where, f"cannot be written as TOML ({exc})") from exc


def first_difference(meant: Any, back: Any, where: Path = ()) -> Path | None:
    """The path of the first value that differs, types included (1 is not 1.0 or True)."""
    if isinstance(meant, Mapping) and isinstance(back, Mapping):
        if set(meant) != set(back):
            return (*where, sorted(map(str, set(meant) ^ set(back)))[0])
        for name in meant:
            found = first_difference(meant[name], back[name], (*where, str(name)))
            if found is not None:
                return found
        return None
    if isinstance(meant, list | tuple) and isinstance(back, list | tuple):
        if len(meant) != len(back):
            return where
        for index, (a, b) in enumerate(zip(meant, back, strict=True)):
            found = first_difference(a, b, (*where, index))
            if found is not None:
                return found
        return None
    if type(meant) is not type(back) or meant != back:
        return where
    return None
