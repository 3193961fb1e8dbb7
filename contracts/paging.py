"""The paged-read contract every GET shares: `limit`, the cursors' formats, and what a page answers.

A cursor is opaque to clients (docs/openapi.yaml says so); its format lives here because the facade checks
a cursor before it passes it on, and a service may not import another service.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .log_entry import STAMP_DIGITS

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000

# The log's entries start with a stamp (log_entry.py); the cursor is the stamp of the last entry a page
# held and how many entries with exactly that stamp the walk has seen so far.
_LOG_CURSOR = re.compile(rf"(?P<stamp>[0-9]{{{STAMP_DIGITS}}})\.(?P<seen>[1-9][0-9]{{0,8}})", re.ASCII)
# A messages instance numbers what it keeps 1, 2, 3...: the cursor is the last number a page held.
_SEQUENCE = re.compile(r"[0-9]{1,18}", re.ASCII)
# The facade's messages cursor also names the instance whose numbers they are: "<seq>.<instance id>".
_INSTANCE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,200}", re.ASCII)


class BadCursor(ValueError):
    """A cursor no page of ours produced; the message is safe to show the client."""


@dataclass(frozen=True)
class LogCursor:
    stamp: int
    seen: int

    def encode(self) -> str:
        return f"{self.stamp:0{STAMP_DIGITS}d}.{self.seen}"

    @classmethod
    def decode(cls, text: str) -> LogCursor:
        match = _LOG_CURSOR.fullmatch(text)
        if match is None:
            raise BadCursor("is not a cursor a page of the log returned")
        return cls(int(match["stamp"]), int(match["seen"]))


def decode_sequence(text: str) -> int:
    if _SEQUENCE.fullmatch(text) is None:
        raise BadCursor("is not a cursor a page of messages returned")
    return int(text)


@dataclass(frozen=True)
class MessagesCursor:
    """Where a walk through one messages instance stands; only that instance can continue it."""

    instance_id: str
    after: int

    def encode(self) -> str:
        return f"{self.after}.{self.instance_id}"

    @classmethod
    def decode(cls, text: str) -> MessagesCursor:
        after, _, instance_id = text.partition(".")
        if _INSTANCE_ID.fullmatch(instance_id) is None:
            raise BadCursor("is not a cursor a page of messages returned")
        return cls(instance_id, decode_sequence(after))
