"""The Idempotency-Key's parsing and the message id derived from it (the store is tested for real in
tests/integration/test_idempotency.py)."""

import uuid

import pytest

from facade.idempotency import key_of, message_id
from servicekit.web import BadInput


def test_a_key_is_read_bare_or_as_a_structured_field_string():
    assert key_of("abc-123") == key_of('"abc-123"') == "abc-123"
    assert key_of(None) is None


@pytest.mark.parametrize("header", ["", "two words", "k" * 256, '"', 'a"b', "caf\u00e9"])
def test_a_malformed_key_is_bad_input(header):
    with pytest.raises(BadInput, match="Idempotency-Key"):
        key_of(header)


def test_the_same_key_always_names_the_same_message_and_another_key_another():
    first = message_id("order-17")
    assert first == message_id("order-17")
    assert first != message_id("order-18")
    assert str(uuid.UUID(first)) == first, "a canonical UUID, as POST /logging requires"
