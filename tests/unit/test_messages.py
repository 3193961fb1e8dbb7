import random
import time

from messages_svc import create_app
from messages_svc.consumer import MessageStore
from messages_svc.settings import MessagesSettings


def test_store_keeps_consumption_order():
    store = MessageStore()
    for msg in ("a", "b", "c"):
        store.append(msg)
    assert store.snapshot() == ["a", "b", "c"]


def test_routes_without_a_consumer():
    client = create_app(MessagesSettings.from_env("messages-service", 8084, env={}), consume=False).test_client()
    client.application.extensions["message_store"].append("kept")
    assert client.get("/messages").json == {"messages": ["kept"], "next": None}
    assert client.get("/health").status_code == 503


def test_messages_are_paged_by_the_numbers_the_store_gave_them():
    client = create_app(MessagesSettings.from_env("messages-service", 8084, env={}), consume=False).test_client()
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
    settings = MessagesSettings.from_env("messages-service", 8084, env={"MESSAGES_KEPT": "2"})
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


class ListStore:
    """The numbering the store's docstring promises, spelled the obvious way: the reference its pages must match."""

    def __init__(self, kept: int, first: int):
        self.kept, self.first, self.messages = kept, first, []

    def append(self, msg: str) -> None:
        self.messages.append(msg)
        if len(self.messages) > self.kept:
            del self.messages[0]
            self.first += 1

    def page(self, after: int | None, limit: int) -> tuple[list[str], int | None]:
        start = 0 if after is None else max(after + 1 - self.first, 0)
        page = self.messages[start : start + limit]
        more = start + limit < len(self.messages)
        return page, (self.first + start + len(page) - 1) if more else None


def test_pages_keep_their_numbers_while_the_oldest_are_let_go_round_and_round():
    rng = random.Random(18)
    for kept in (1, 2, 5, 7):
        store = MessageStore(kept=kept)
        reference = ListStore(kept, first=store._first)  # the store numbers from its clock at birth
        cursors: list[int | None] = [None]
        for n in range(60):
            store.append(f"m{n}")
            reference.append(f"m{n}")
            assert store.snapshot() == reference.messages
            for after in cursors[-4:] + [reference.first - 1, reference.first + kept + 1]:
                for limit in (1, 2, 3, 10):
                    got = store.page(after, limit)
                    assert got == reference.page(after, limit), (kept, n, after, limit)
                    cursors.append(got[1])
            cursors.append(rng.choice(cursors))
        assert store.status() == {"held": kept, "kept": kept, "let_go": 60 - kept, "duplicates": 0}


def test_letting_the_oldest_go_costs_the_same_whatever_the_store_keeps():
    # At the cap, each message drops the oldest under the lock GET /messages takes. `del list[0]` moved
    # every message kept (O(kept)): 2,000 appends to a store of 1,000,000 took hundreds of times what they
    # take to one of 1,000. The bound is generous, so a loaded machine does not trip it.
    def appending(kept: int) -> float:
        store = MessageStore(kept=kept)
        for _ in range(kept):
            store.append("x")
        best = float("inf")
        for _round in range(3):
            started = time.perf_counter()
            for _ in range(2000):
                store.append("y")
            best = min(best, time.perf_counter() - started)
        return best

    small, large = appending(1_000), appending(1_000_000)
    assert large < 10 * small + 0.005, (small, large)
