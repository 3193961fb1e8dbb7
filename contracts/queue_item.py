"""The items on the messages queue: {"id": "<uuid>", "msg": "...", "request_id": "..."} JSON, written by
the facade and read by messages_svc. `request_id` is optional: items queued before it existed (or by the
bench) have none, and decode the same."""

from __future__ import annotations

import json
from typing import NamedTuple

from .id_format import valid_request_id


class Item(NamedTuple):
    id: str
    msg: str
    request_id: str | None


def encode(message_id: str, msg: str, request_id: str | None = None) -> str:
    data = {"id": message_id, "msg": msg}
    if request_id is not None:
        data["request_id"] = request_id
    return json.dumps(data)


def decode_item(item: object) -> Item | None:
    """The item's fields; None for anything the facade does not write. A request id the facade would not
    have written is dropped: it goes into log lines."""
    try:
        data = json.loads(item)  # type: ignore[arg-type]
        msg = data["msg"]
    except (TypeError, ValueError, KeyError):
        return None
    if not isinstance(msg, str):
        return None
    message_id = data.get("id")
    rid = data.get("request_id")
    return Item(
        message_id if isinstance(message_id, str) else "",
        msg,
        rid if isinstance(rid, str) and valid_request_id(rid) else None,
    )


def decode(item: object) -> str | None:
    """The message an item carries; None for anything the facade does not write."""
    decoded = decode_item(item)
    return None if decoded is None else decoded.msg
