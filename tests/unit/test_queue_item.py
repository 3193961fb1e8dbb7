"""The queue item format, shared by the facade (writer) and messages_svc (reader)."""

import json

from hypothesis import given
from hypothesis import strategies as st

from contracts.queue_item import decode, encode


def test_decode_takes_the_message_of_a_facade_item():
    assert decode(json.dumps({"id": "1", "msg": "hello"})) == "hello"


def test_decode_rejects_anything_else():
    for item in ("", "[]", "{}", json.dumps({"msg": 1}), "not json", None):
        assert decode(item) is None


@given(st.uuids().map(str), st.text())
def test_what_the_facade_writes_the_consumer_reads_back_unchanged(message_id, msg):
    item = encode(message_id, msg)
    assert json.loads(item) == {"id": message_id, "msg": msg}
    assert decode(item) == msg


def test_the_item_format_loads_neither_flask_nor_tracing():
    # The format needs the request id's grammar only, not the request hooks around it.
    import subprocess
    import sys

    code = "import sys, contracts.queue_item; print(sorted({'flask', 'servicekit.tracing'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
