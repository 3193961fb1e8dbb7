"""A client of the facade that does what docs/API.md asks of one: a `503` is retried after its `Retry-After`,
with the same `Idempotency-Key`, so that a message is acknowledged once however many tries it took.

For the tests whose subject is what an acknowledged message becomes (kept through a restart, consumed once):
on 2 cores shared by a whole suite, a write may miss its deadline and answer 503, as it is meant to. The
tests of the 503 itself post with plain requests.
"""

from __future__ import annotations

import time
import uuid

import requests

# Retry-After is 1 s on every 503; a client that waits no more than this between tries still honours it.
MAX_WAIT_S = 2.0


def post_acknowledged(url: str, msg: str, attempts: int = 10, timeout: float = 15.0) -> requests.Response:
    """POST `msg` until it is answered anything but 503 (at most `attempts` tries), under one key."""
    headers = {"Idempotency-Key": f"client-{uuid.uuid4()}"}
    for _ in range(attempts - 1):
        answer = requests.post(url, json={"msg": msg}, headers=headers, timeout=timeout)
        if answer.status_code != 503:
            return answer
        time.sleep(min(float(answer.headers.get("Retry-After", 1)), MAX_WAIT_S))
    return requests.post(url, json={"msg": msg}, headers=headers, timeout=timeout)
