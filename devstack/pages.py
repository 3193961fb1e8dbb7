"""Reading a paged GET to its end: the whole log, or everything one messages instance holds."""

from __future__ import annotations

import requests

from contracts.paging import MAX_LIMIT

# A walk of this many pages has not reached its end: the reader is chasing writers faster than itself.
MAX_PAGES = 1000


def read_all(url: str, key: str, cursor: str = "next", param: str = "after", timeout: float = 10.0) -> list[str]:
    """Every item under `key`, following the `cursor` of each answer as `param` until it is null.

    read_all(stack.url, "logging"): the log through the facade; read_all(f"{s.url}/messages", "messages"):
    what one messages instance holds; read_all(stack.url, "messages", "messages_next", "messages_after"):
    what the messages instance of the facade's first answer holds.
    """
    items: list[str] = []
    params: dict[str, str | int] = {"limit": MAX_LIMIT}
    for _ in range(MAX_PAGES):
        response = requests.get(url, params=params, timeout=timeout)
        response.raise_for_status()
        body = response.json()
        items += body[key]
        if body[cursor] is None:
            return items
        params[param] = body[cursor]
    raise AssertionError(f"{url} still had pages after {MAX_PAGES}")
