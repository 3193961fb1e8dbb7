"""Calls from the facade to logging_svc and messages_svc, at instances Consul reports as passing."""

from __future__ import annotations

import logging
from typing import Any, Callable

import consul
import requests

from servicekit.discovery import DiscoveryError, Instance, passing_instances, shuffled
from servicekit.settings import Settings
from servicekit.web import Unavailable

log = logging.getLogger(__name__)

LOGGING_SERVICE = "logging-service"
MESSAGES_SERVICE = "messages-service"


class Backends:
    def __init__(self, settings: Settings, consul_client: consul.Consul):
        self._consul = consul_client
        self._timeout = (settings.connect_timeout, settings.read_timeout)
        # One pooled session per worker: keep-alive connections to every instance.
        self._http = requests.Session()

    def close(self) -> None:
        self._http.close()

    def _instances(self, service: str) -> list[Instance]:
        try:
            instances = passing_instances(self._consul, service)
        except DiscoveryError as exc:
            raise Unavailable(f"cannot discover {service}: {exc}") from exc
        if not instances:
            raise Unavailable(f"no healthy {service} instance")
        return instances

    def _call(self, service: str, send: Callable[[Instance], requests.Response]) -> tuple[Instance, Any]:
        """Send to one random passing instance; on a connection error, timeout or 5xx try the next.

        Only used for calls that are safe to repeat: GETs, and POST /logging, which is idempotent by id.
        """
        failures = []
        for instance in shuffled(self._instances(service)):
            try:
                response = send(instance)
            except requests.RequestException as exc:
                failures.append(f"{instance.id}: {type(exc).__name__}")
                log.warning("%s failed, trying another instance: %s", instance.id, exc)
                continue
            if response.status_code >= 500:
                failures.append(f"{instance.id}: HTTP {response.status_code}")
                log.warning("%s answered %s, trying another instance", instance.id, response.status_code)
                continue
            response.raise_for_status()
            return instance, response.json()
        raise Unavailable(f"every {service} instance failed ({'; '.join(failures)})")

    def log_message(self, message_id: str, msg: str) -> str:
        """Store the message through one logging instance; returns that instance's id."""
        instance, _ = self._call(
            LOGGING_SERVICE,
            lambda i: self._http.post(f"{i.url}/logging", json={"id": message_id, "msg": msg}, timeout=self._timeout),
        )
        return instance.id

    def logged_messages(self) -> list[str]:
        _, body = self._call(LOGGING_SERVICE, lambda i: self._http.get(f"{i.url}/logging", timeout=self._timeout))
        return body["messages"]

    def consumed_messages(self) -> tuple[str, list[str]]:
        """The messages one messages instance holds, and that instance's id."""
        instance, body = self._call(
            MESSAGES_SERVICE, lambda i: self._http.get(f"{i.url}/messages", timeout=self._timeout)
        )
        return instance.id, body["messages"]
