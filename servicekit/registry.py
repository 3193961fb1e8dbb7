"""Registering an instance with the local Consul agent, and leaving it."""

from __future__ import annotations

import logging
import time

import consul
import requests

from .consul_client import make_consul
from .settings import Settings

log = logging.getLogger(__name__)

CONSUL_ERRORS = (consul.ConsulException, requests.RequestException)


def service_definition(settings: Settings) -> dict:
    """The service and its HTTP health check, as the agent's register endpoint takes them."""
    base = f"http://{settings.host}:{settings.port}"
    return {
        "name": settings.service_name,
        "service_id": settings.instance_id,
        "address": settings.host,
        "port": settings.port,
        "tags": [f"v{settings.version}"],
        "meta": {"version": settings.version},
        "check": consul.Check.http(
            f"{base}/health",
            interval=settings.check_interval,
            timeout=settings.check_timeout,
            deregister=settings.deregister_after,
        ),
    }


def register(settings: Settings, attempts: int = 5, client: consul.Consul | None = None) -> bool:
    """Register this instance; retry with backoff, because the agent may still be starting."""
    client = client or make_consul(settings)
    delay = 0.2
    for attempt in range(1, attempts + 1):
        try:
            client.agent.service.register(**service_definition(settings))
            log.info("registered %s at %s with Consul %s", settings.instance_id, settings.bind, settings.consul.url)
            return True
        except CONSUL_ERRORS as exc:
            log.warning("registering with Consul failed (attempt %d/%d): %s", attempt, attempts, exc)
            if attempt < attempts:
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
    return False


def deregister(settings: Settings, client: consul.Consul | None = None) -> None:
    client = client or make_consul(settings)
    try:
        client.agent.service.deregister(settings.instance_id)
        log.info("deregistered %s from Consul", settings.instance_id)
    except CONSUL_ERRORS as exc:
        # Consul drops it by itself after DeregisterCriticalServiceAfter.
        log.warning("deregistering from Consul failed: %s", exc)
