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
    assert client.get("/messages").json == {"messages": ["kept"], "next": None}
    assert client.get("/health").status_code == 503


def test_messages_are_paged_by_the_numbers_the_store_gave_them():
    client = create_app(Settings.from_env("messages-service", 8084, env={}), consume=False).test_client()
    for msg in "abc":
        client.application.extensions["message_store"].append(msg)
    first = client.get("/messages?limit=2").json
    assert first["messages"] == ["a", "b"] and first["next"].isdigit()
    assert client.get(f"/messages?limit=2&after={first['next']}").json == {"messages": ["c"], "next": None}
    for query in ("limit=0", "after=x", "after=-1"):
        response = client.get(f"/messages?{query}")
        assert response.status_code == 400 and query.split("=")[0] in response.json["error"]
