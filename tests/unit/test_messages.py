from messages_svc import create_app
from messages_svc.consumer import MessageStore
from servicekit.settings import Settings


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
