import json

from messages_svc import create_app
from messages_svc.consumer import MessageStore, decode
from servicekit.settings import Settings


def test_decode_takes_the_message_of_a_facade_item():
    assert decode(json.dumps({"id": "1", "msg": "hello"})) == "hello"


def test_decode_rejects_anything_else():
    for item in ("", "[]", "{}", json.dumps({"msg": 1}), "not json"):
        assert decode(item) is None


def test_store_keeps_consumption_order():
    store = MessageStore()
    for msg in ("a", "b", "c"):
        store.append(msg)
    assert store.snapshot() == ["a", "b", "c"]


def test_routes_without_a_consumer():
    client = create_app(Settings.from_env("messages-service", 8084, env={}), consume=False).test_client()
    client.application.extensions["message_store"].append("kept")
    assert client.get("/messages").json == {"messages": ["kept"]}
    assert client.get("/health").status_code == 503
