"""messages_svc's settings: the fields every service has (servicekit.settings), and how many messages an
instance keeps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from servicekit.settings import Settings, env_int


@dataclass(frozen=True)
class MessagesSettings(Settings):
    # The newest messages an instance keeps of those it consumed, letting the older ones go: at most about
    # 85 MB of Python strings per instance for messages of 4,096 ASCII characters (4 times that for
    # characters outside the BMP, which Python stores in 4 bytes each).
    messages_kept: int = 20_000

    @classmethod
    def own_from_env(cls, env: Mapping[str, str]) -> dict[str, Any]:
        return {"messages_kept": env_int(env, "MESSAGES_KEPT", 20_000, minimum=1)}
