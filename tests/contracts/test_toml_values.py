"""Every value loraq writes to a trainer's TOML reads back identical, or is refused by key.

The cases are the ones the ``toml`` package's writer got wrong (issue 10, finding 6): each must
now either round-trip through both readers the trainer side uses, or be refused on arrival.
"""

from __future__ import annotations

import random
import tomllib

import pytest
import toml

from contracts.pass_through import refusals
from contracts.toml_values import UnfaithfulToml, check_value, dumps, first_difference

BACKSLASHES = ["\\x41 ", "C:\\x", "C:\\new\\table", "\\u0041", "a\\\\b", 'quote " and \\"']


@pytest.mark.parametrize("text", BACKSLASHES)
def test_backslashes_read_back_identical_in_both_readers(text: str) -> None:
    """GIVEN strings ``toml.dumps`` corrupted (``"\\x41 "`` read back as ``"A "``, ``"C:\\x"``
    written as invalid TOML) WHEN written THEN tomllib and toml both read them back unchanged."""
    document = {"caption_prefix": text, "model": {"note": text}}
    written = dumps(document)
    assert tomllib.loads(written) == document
    assert toml.loads(written) == document


def test_the_old_writer_really_corrupted_them() -> None:
    """GIVEN the same strings WHEN written by ``toml.dumps`` THEN at least the issue's cases come
    back wrong or unreadable: the reason loraq no longer writes with it."""
    wrong = 0
    for text in BACKSLASHES[:2]:
        try:
            wrong += toml.loads(toml.dumps({"v": text}))["v"] != text
        except toml.TomlDecodeError:
            wrong += 1
    assert wrong == 2


@pytest.mark.parametrize("value", ["bell\u0007end", "nul\x00", "\x01", "esc\x1b[2J"])
def test_control_characters_are_refused_by_key_on_arrival(value: str) -> None:
    """GIVEN a pass-through string with a control character WHEN the request is checked THEN
    it is refused at its key, never handed to a writer (``toml`` raised IndexError on ``\\x00``)."""
    found = list(refusals({"monitoring": {"wandb_project": value}}))
    assert [r.where for r in found] == [("training", "monitoring", "wandb_project")]


def test_a_mixed_array_is_refused_because_the_trainer_cannot_read_it() -> None:
    """GIVEN ``[1, "a"]`` (valid TOML 1.0, which tomllib reads) WHEN checked THEN refused at its
    key: diffusion-pipe reads its config with ``toml.load``, which raises on a mixed array."""
    found = list(refusals({"betas_note": [1, "a"]}))
    assert [r.where for r in found] == [("training", "betas_note")]
    assert "toml" in found[0].reason
    with pytest.raises(UnfaithfulToml) as caught:
        dumps({"model": {"mixed": [1, "a"]}})
    assert caught.value.key == "model.mixed"


def test_types_are_part_of_faithful() -> None:
    """GIVEN an int read back as a float WHEN compared THEN the difference is found at its key."""
    assert first_difference({"a": {"b": [1, 2]}}, {"a": {"b": [1, 2.0]}}) == ("a", "b", 1)
    assert first_difference({"a": True}, {"a": 1}) == ("a",)
    assert first_difference({"a": "x"}, {"a": "x"}) is None


def test_non_finite_floats_cannot_be_written() -> None:
    with pytest.raises(UnfaithfulToml) as caught:
        check_value(("optimizer", "betas"), [0.9, float("nan")])
    assert caught.value.key == "optimizer.betas[1]"


def test_random_printable_strings_round_trip_or_are_refused() -> None:
    """GIVEN 2,000 seeded random strings of backslashes, quotes, printable ASCII and non-ASCII
    WHEN each passes the arrival check THEN both readers return it unchanged from the writer."""
    alphabet = "\\\"'abcxu0179 {}[]=#\t\u00e9\u4e2d\U0001f600"
    rng = random.Random(10)
    accepted = 0
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        if list(refusals({"note": text})):
            continue
        accepted += 1
        written = dumps({"note": text})
        assert tomllib.loads(written)["note"] == text
        assert toml.loads(written)["note"] == text
    assert accepted > 1000
