"""Encryption context encoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsm.context import MAX_PAIRS, decode_context, encode_context, validate_context
from hsm.errors import InvalidContext

contexts = st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=6)


def test_shifted_boundaries_do_not_collide() -> None:
    """{"a": "bc"} and {"ab": "c"} encode differently (the emulators' classic bug)."""
    assert encode_context({"a": "bc"}) != encode_context({"ab": "c"})
    assert encode_context({"a": "b", "c": "d"}) != encode_context({"a": "bcd"})


def test_order_does_not_matter() -> None:
    """Two dicts with the same pairs in another order encode the same."""
    assert encode_context({"x": "1", "y": "2"}) == encode_context({"y": "2", "x": "1"})


def test_empty_and_none_are_the_same_context() -> None:
    """No context and the empty context are one and the same."""
    assert encode_context(None) == encode_context({}) == b"\x00\x00"


@given(contexts, contexts)
def test_encoding_is_injective(a: dict[str, str], b: dict[str, str]) -> None:
    """Different contexts never share an encoding, equal ones always do."""
    assert (encode_context(a) == encode_context(b)) == (a == b)


@given(contexts)
def test_decode_inverts_encode(ctx: dict[str, str]) -> None:
    """Decoding an encoding gives back the context."""
    assert decode_context(encode_context(ctx)) == ctx


@given(st.binary(max_size=64))
def test_decode_rejects_garbage_with_a_typed_error(data: bytes) -> None:
    """Arbitrary bytes either decode to a context that re-encodes identically, or raise
    InvalidContext."""
    try:
        ctx = decode_context(data)
    except InvalidContext:
        return
    assert encode_context(ctx) == data


@pytest.mark.parametrize(
    "bad",
    [["a", "b"], {"a": 1}, {1: "a"}, {"a": None}, "tenant=acme", {"a": b"x"}],
)
def test_non_str_contexts_are_refused(bad: object) -> None:
    """A context that is not a str -> str mapping raises InvalidContext (a ValueError)."""
    with pytest.raises(InvalidContext):
        encode_context(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="context"):
        validate_context(bad)


def test_oversized_contexts_are_refused() -> None:
    """Too many pairs, or too many bytes, are refused before anything is built."""
    with pytest.raises(InvalidContext, match="pairs"):
        encode_context({str(i): "" for i in range(MAX_PAIRS + 1)})
    with pytest.raises(InvalidContext, match="larger"):
        encode_context({"k": "v" * 9000})


def test_lone_surrogates_are_refused() -> None:
    """A string that can't be UTF-8 encoded is an InvalidContext, not a UnicodeError."""
    with pytest.raises(InvalidContext):
        encode_context({"k": "\ud800"})


def test_documented_examples() -> None:
    """The byte examples in docs/FORMAT.md are what the code produces."""
    assert encode_context({"a": "bc"}) == bytes.fromhex("0001000161000262 63".replace(" ", ""))
    assert encode_context({"ab": "c"}) == bytes.fromhex("000100026162000163")


def test_property_tests_have_no_wall_clock_deadline() -> None:
    """tests/conftest.py loads a hypothesis profile without deadlines: an example that is
    slow on a loaded machine is not a failure (issue 8, item 19)."""
    from hypothesis import settings

    assert settings.default is not None
    assert settings.default.deadline is None
