"""Configuration that applies live: each worker watches its keys in Consul KV and applies a change without a
restart, where that is safe.

One watch per worker (threads do not survive gunicorn's fork; create_app starts it), one blocking query on
the `config/` prefix, so a change reaches every worker within milliseconds of the write and costs no request
a Consul call. The value in the environment is the start value; the KV key, when present and valid, wins;
when the key is deleted the start value comes back. A value that does not parse or cannot be applied is
refused with a log line and the old value stays; `status()` (shown in /health) says what is applied, from
which KV index, the KV index of Consul's last answer, and what was refused.

Which keys apply how is the table in docs/OPERATIONS.md ("Configuration that applies live").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import consul

from .blocking_watch import BlockingWatch
from .errors import Refused
from .settings import forwarded_body_bytes

log = logging.getLogger(__name__)

PREFIX = "config/"
KEY_MAX_MESSAGE_CHARS = "config/limits/max-message-chars"


# A KV value may hold up to 512 KB; the log and /health show its start and its length.
SHOWN_CHARS = 100


def _shown(raw: str) -> str:
    return repr(raw) if len(raw) <= SHOWN_CHARS else f"{raw[:SHOWN_CHARS]!r}... ({len(raw)} characters)"


def parse_max_message_chars(raw: str, max_body_bytes: int) -> int:
    """A positive whole number of code points whose forwarded body still fits MAX_BODY_BYTES, which is fixed
    at start (the gunicorn worker enforces it before the app sees a request)."""
    text = raw.strip()
    if not (text.isascii() and text.isdigit()):
        raise Refused(f"must be a positive whole number, got {_shown(raw)}")
    # int() refuses more than 4,300 digits (CPython's guard against quadratic conversions); a number with
    # more digits than MAX_BODY_BYTES cannot fit it anyway.
    digits = text.lstrip("0")
    if len(digits) > len(str(max_body_bytes)):
        raise Refused(f"a number of {len(digits)} digits cannot fit MAX_BODY_BYTES ({max_body_bytes})")
    value = int(digits or "0")
    if value < 1:
        raise Refused(f"must be a positive whole number, got {_shown(raw)}")
    needed = forwarded_body_bytes(value)
    if needed > max_body_bytes:
        raise Refused(f"{value} characters need MAX_BODY_BYTES of at least {needed} (it is {max_body_bytes})")
    return value


@dataclass(frozen=True)
class LiveSetting:
    """One key a worker applies live: its start value (from the environment), how to read a KV value, and
    how to apply one (called on the watch's thread; an exception there refuses the value)."""

    key: str
    start: Any
    parse: Callable[[str], Any]
    apply: Callable[[Any], None]


@dataclass(frozen=True)
class _Applied:
    value: Any
    index: int | None  # the ModifyIndex of the KV value in force; None for the start value


# A change wakes a blocking query at once, whatever the wait; the wait only sets how often an idle watch asks
# again. With 30 s, the watches of every worker of every instance made the bench's Consul queries per 1,000
# requests 3.2 (from 0.2); Consul's longest wait is 10 min. An agent that restarts or dies breaks the
# connection, which the watch sees at once.
KV_WAIT = "5m"


class LiveConfig:
    """Watches `config/` in Consul KV on a named daemon thread and applies what changed to each setting."""

    def __init__(self, client: consul.Consul, settings: list[LiveSetting], wait: str = KV_WAIT):
        self._client = client
        self._settings = {s.key: s for s in settings}
        self._wait = wait
        self._applied = {s.key: _Applied(s.start, None) for s in settings}
        # The ModifyIndex last looked at per key: an answer woken by another key's change applies nothing.
        self._seen: dict[str, int | None] = {s.key: None for s in settings}
        self._refused: dict[str, dict] = {}
        self._index_applied: int | None = None
        self._lock = threading.Lock()
        self._loaded = threading.Event()
        self._watch = BlockingWatch(
            "live-config",
            PREFIX,
            lambda index: self._client.kv.get(PREFIX, recurse=True, index=index, wait=self._wait),
            lambda index, entries: self.answered(index, entries or []),
            refused=f"Consul refused to read {PREFIX} (CONSUL_HTTP_TOKEN needs key_prefix read on it)",
            unreachable=f"Consul is unreachable while watching {PREFIX} (the values in force stay)",
        )

    def start(self) -> LiveConfig:
        self._watch.start()
        return self

    def stop(self, timeout: float = 0.0) -> bool:
        return self._watch.stop(timeout)

    def wait_loaded(self, timeout: float) -> bool:
        """Wait up to `timeout` for Consul's first answer to be applied; True once it is."""
        return self._loaded.wait(timeout)

    def status(self) -> dict:
        with self._lock:
            return {
                "index": self._index_applied,
                # The X-Consul-Index of Consul's last answer: the values in force are current as of it.
                "answered_index": self._watch.index.last,
                "values": {
                    key: {"value": a.value, "from": "env" if a.index is None else "kv", "index": a.index}
                    for key, a in self._applied.items()
                },
                "refused": dict(self._refused),
                "consul": self._watch.consul_status,
            }

    def answered(self, index: int, entries: list[dict]) -> None:
        """Apply what changed in one answer of Consul's (the X-Consul-Index and the entries under PREFIX)."""
        self._watch.index.answered(index)
        found = {entry["Key"]: entry for entry in entries}
        for key, setting in self._settings.items():
            entry = found.get(key)
            if entry is None:
                self._absent(setting, index)
            else:
                self._present(setting, entry, index)
        self._loaded.set()

    def _absent(self, setting: LiveSetting, index: int) -> None:
        self._seen[setting.key] = None
        with self._lock:
            self._refused.pop(setting.key, None)
        if self._applied[setting.key].index is None:
            return
        log.info("%s was deleted; back to the start value %r", setting.key, setting.start)
        self._apply(setting, setting.start, None, index)

    def _present(self, setting: LiveSetting, entry: dict, index: int) -> None:
        raw = ""
        try:
            modify_index = int(entry["ModifyIndex"])
            if self._seen[setting.key] == modify_index:
                return
            self._seen[setting.key] = modify_index
            index = modify_index
            raw = (entry.get("Value") or b"").decode("utf-8", errors="replace")
            value = setting.parse(raw)
        # Whatever goes wrong with one key refuses that key alone: the answer's other keys still apply.
        except Exception as exc:
            self._refuse(setting, raw, exc, index)
            return
        self._apply(setting, value, modify_index, modify_index, raw)

    def _apply(self, setting: LiveSetting, value: Any, source: int | None, index: int, raw: str = "") -> None:
        old = self._applied[setting.key].value
        try:
            setting.apply(value)
        except Exception as exc:
            self._refuse(setting, raw, exc, index)
            return
        with self._lock:
            self._applied[setting.key] = _Applied(value, source)
            self._index_applied = index
            self._refused.pop(setting.key, None)
        if value != old:
            log.info("applied %s = %r (was %r) from KV index %d", setting.key, value, old, index)

    def _refuse(self, setting: LiveSetting, raw: str, exc: Exception, index: int) -> None:
        kept = self._applied[setting.key].value
        # A ValueError (Refused among them) is a value the setting rejects; anything else is a bug, logged
        # with its traceback.
        reason = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        log.error(
            "refusing %s = %s at KV index %d: %s; keeping %r",
            setting.key,
            _shown(raw),
            index,
            reason,
            kept,
            exc_info=not isinstance(exc, ValueError),
        )
        with self._lock:
            self._refused[setting.key] = {
                "value": raw if len(raw) <= SHOWN_CHARS else _shown(raw),
                "reason": reason,
                "index": index,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }


def message_limit(app, max_body_bytes: int) -> LiveSetting:
    """MAX_MESSAGE_CHARS of a Flask app (servicekit.web.require_message reads it on every request)."""

    def apply(value: int) -> None:
        app.config["MAX_MESSAGE_CHARS"] = value

    return LiveSetting(
        key=KEY_MAX_MESSAGE_CHARS,
        start=app.config["MAX_MESSAGE_CHARS"],
        parse=lambda raw: parse_max_message_chars(raw, max_body_bytes),
        apply=apply,
    )
