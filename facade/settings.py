"""The facade's settings: the fields every service has (servicekit.settings), and those of its calls to the
other services."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from servicekit.settings import Settings, SettingsError, env_float, env_int
from upstream import balancing


@dataclass(frozen=True)
class FacadeSettings(Settings):
    # The budget for one call to logging or messages, retries on other instances included.
    request_deadline: float = 5.0
    # Retries of calls to other services, as a share of the calls over the last 10 s (per worker and
    # service), and the retries allowed in any case: a slow tier gets at most a tenth more calls. The
    # minimum covers what ejecting one bad instance costs a quiet worker (upstream/outliers.py): its 3
    # failures in a row, plus up to 3 calls its other threads had already sent there, each retried.
    retry_budget_ratio: float = 0.1
    retry_budget_minimum: int = 6
    # How long POST /facade replays its first answer to a request with the same Idempotency-Key.
    idempotency_window: float = 3600.0
    # How the facade picks an instance (upstream.balancing.POLICIES): "random" (by weight) or "p2c" (the
    # less busy of two). Consul KV may switch it live.
    lb_policy: str = balancing.DEFAULT_POLICY

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            balancing.parse_policy(self.lb_policy)
        except ValueError:
            raise SettingsError(f"LB_POLICY must be one of {balancing.KNOWN}, got {self.lb_policy!r}") from None

    @classmethod
    def own_from_env(cls, env: Mapping[str, str]) -> dict[str, Any]:
        return {
            "request_deadline": env_float(env, "REQUEST_DEADLINE", 5.0),
            "retry_budget_ratio": env_float(env, "RETRY_BUDGET_RATIO", 0.1, allow_zero=True),
            "retry_budget_minimum": env_int(env, "RETRY_BUDGET_MINIMUM", 6),
            "idempotency_window": env_float(env, "IDEMPOTENCY_WINDOW", 3600.0),
            "lb_policy": env.get("LB_POLICY") or balancing.DEFAULT_POLICY,
        }
