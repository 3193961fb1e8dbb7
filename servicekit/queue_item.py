"""The items on the messages queue: {"id": "<uuid>", "msg": "..."} JSON, written by the facade and read
by messages_svc."""

from __future__ import annotations

import json


def encode(message_id: str, msg: str) -> str:
    return json.dumps({"id": message_id, "msg": msg})


def decode(item: object) -> str | None:
    """The message an item carries; None for anything the facade does not write."""
    try:
        data = json.loads(item)  # type: ignore[arg-type]
        msg = data["msg"]
    except (TypeError, ValueError, KeyError):
        return None
    return msg if isinstance(msg, str) else None
