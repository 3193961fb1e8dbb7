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


def test_store_keeps_only_the_newest_and_counts_what_it_let_go():
    store = MessageStore(kept=3)
    for msg in "abcde":
        store.append(msg)
    assert store.snapshot() == ["c", "d", "e"]
    assert (store.kept, store.let_go) == (3, 2)


def test_health_shows_how_many_are_kept_and_how_many_were_let_go():
    settings = Settings.from_env("messages-service", 8084, env={"MESSAGES_KEPT": "2"})
    client = create_app(settings, consume=False).test_client()
    for msg in "xyz":
        client.application.extensions["message_store"].append(msg)
    assert client.get("/messages").json == {"messages": ["y", "z"], "next": None}
    assert client.get("/health").json["details"]["store"] == {"held": 2, "kept": 2, "let_go": 1, "duplicates": 0}


def test_a_cursor_keeps_its_place_while_the_oldest_messages_are_let_go():
    store = MessageStore(kept=3)
    for msg in "abc":
        store.append(msg)
    first, cursor = store.page(None, 2)
    assert first == ["a", "b"]
    for msg in "de":
        store.append(msg)
    assert store.page(cursor, 2)[0] == ["c", "d"]
    assert store.page(None, 10) == (["c", "d", "e"], None)
