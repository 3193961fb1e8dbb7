"""Stub service instances: tiny HTTP servers on loopback, registered in a real Consul agent with the
product's own service definition (an HTTP check on /health), that fail or slow down on purpose. Faults made
from outside the product, for the tests and the bench.

- `StubInstance`: answers as a logging or messages instance would, with a chosen status for POSTs, a delay,
  and a chosen /health status (429 makes Consul's HTTP check `warning`), or a few failed /health answers;
  or reads each POST whole and drops the connection without answering, as a worker killed mid-request.
- `DelayProxy`: forwards every call to a real instance after a fixed delay, registered in its place.
- `stubbed_facade`: a real facade under gunicorn, in a Consul agent of its own, in front of stub instances.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import consul
import requests

from contracts.id_format import HEADER, TRACEPARENT
from devstack.consul_agent import check_status
from devstack.hazelcast_cluster import HazelcastCluster
from devstack.ports import free_port
from devstack.processes import until
from devstack.stack import Service, isolated_agent, start_service, wait_passing
from servicekit.registration import service_definition
from servicekit.settings import Settings


class _Server:
    """A threading HTTP server on a free loopback port, counting the calls it receives."""

    def __init__(self, service: str):
        self.service = service
        self.calls: list[str] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.settings = Settings(service_name=service, port=self.port)
        self._thread = threading.Thread(target=self.server.serve_forever, name=f"stub-{self.port}", daemon=True)

    @property
    def instance_id(self) -> str:
        return self.settings.instance_id

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # The caller may have given up on a slow answer and closed the connection.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

            def body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self) -> None:
                stub._handle(self)

            def do_POST(self) -> None:
                stub._handle(self)

            def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
                pass

        return Handler

    def _handle(self, handler) -> None:
        raise NotImplementedError

    def _count(self, handler) -> None:
        if handler.path != "/health":
            with self._lock:
                self.calls.append(f"{handler.command} {handler.path}")

    def count(self, prefix: str = "") -> int:
        with self._lock:
            return sum(call.startswith(prefix) for call in self.calls)

    def serve(self) -> _Server:
        """Answer calls, without registering in Consul (start does both)."""
        self._thread.start()
        return self

    def start(self, client: consul.Consul, weights: dict[str, int] | None = None) -> _Server:
        self.serve()
        definition = service_definition(self.settings)
        if weights is not None:
            definition["weights"] = weights
        client.agent.service.register(**definition)
        return self

    def stop(self, client: consul.Consul) -> None:
        with contextlib.suppress(consul.ConsulException, requests.RequestException):
            client.agent.service.deregister(self.instance_id)
        self.server.shutdown()
        self.server.server_close()


class StubInstance(_Server):
    """Answers as a logging or messages instance would: POST echoes the body with `post_status`, GET an
    empty last page, each after `delay` seconds; /health answers `health_status` at once, or 503 while
    `health_fail_next` > 0 (one fewer each time). With `drop_posts`, it reads each POST whole and closes the
    connection without answering: "close" as a worker killed while it handled the request (the kernel sends
    FIN: the caller reads "Remote end closed connection without response"), "reset" with an RST.

    It keeps the headers of every call but /health (`headers`), every /health answer with its time
    (`answered_since`), and how many calls it is still answering (`busy`)."""

    def __init__(
        self,
        service: str,
        post_status: int = 201,
        delay: float = 0.0,
        health_status: int = 200,
        drop_posts: str | None = None,
    ):
        if drop_posts not in (None, "close", "reset"):
            raise ValueError(f"drop_posts must be None, 'close' or 'reset', not {drop_posts!r}")
        self.post_status = post_status
        self.drop_posts = drop_posts
        self.delay = delay
        self.health_status = health_status
        self.health_fail_next = 0
        self.headers: list[dict[str, str]] = []
        self.busy = 0
        self._health_answers: list[tuple[float, int]] = []
        super().__init__(service)

    def _handle(self, handler) -> None:
        if handler.path == "/health":
            with self._lock:
                status = 503 if self.health_fail_next > 0 else self.health_status
                self.health_fail_next = max(0, self.health_fail_next - 1)
                self._health_answers.append((time.monotonic(), status))
            handler.answer(status, b'{"status": "stub"}')
            return
        self._count(handler)
        with self._lock:
            self.headers.append(dict(handler.headers))
            self.busy += 1
        try:
            sent = handler.body()
            time.sleep(self.delay)
            if handler.command == "POST" and self.drop_posts is not None:
                self._drop(handler)
                return
            if handler.command == "POST":
                status = self.post_status
                body = {**json.loads(sent), "created": True} if status < 400 else {"error": "stub failure"}
            else:
                status, body = 200, {"messages": [], "next": None}
            handler.answer(status, json.dumps(body).encode())
        finally:
            with self._lock:
                self.busy -= 1

    def _drop(self, handler) -> None:
        handler.close_connection = True
        if self.drop_posts == "reset":
            # Linger 0: close() sends RST instead of FIN.
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            handler.connection.close()

    def answered_since(self, since: float, status: int) -> int:
        """How many /health answers with `status` it gave after `since` (time.monotonic())."""
        with self._lock:
            return sum(at > since and s == status for at, s in self._health_answers)


class DelayProxy(_Server):
    """Forwards every call (its /health included) to `target` (a real instance's base URL), each call but
    /health after `delay` seconds: the real instance, slowed from outside."""

    def __init__(self, service: str, target: str, delay: float):
        self.target = target
        self.delay = delay
        self._local = threading.local()
        super().__init__(service)

    @staticmethod
    def _forwarded(headers) -> dict[str, str]:
        """The body's type, and the request id and trace context, so the instance's lines carry the caller's id."""
        forwarded = {"Content-Type": headers.get("Content-Type", "application/json")}
        for name in (HEADER, TRACEPARENT):
            if headers.get(name) is not None:
                forwarded[name] = headers[name]
        return forwarded

    def _handle(self, handler) -> None:
        self._count(handler)
        sent = handler.body() if handler.command == "POST" else None
        if handler.path != "/health":
            time.sleep(self.delay)
        if not hasattr(self._local, "http"):
            self._local.http = requests.Session()
            self._local.http.trust_env = False
        try:
            response = self._local.http.request(
                handler.command,
                self.target + handler.path,
                data=sent,
                headers=self._forwarded(handler.headers),
                timeout=10,
            )
        except requests.RequestException as exc:
            handler.answer(502, json.dumps({"error": f"proxy: {type(exc).__name__}"}).encode())
            return
        handler.answer(response.status_code, response.content, response.headers.get("Content-Type", "text/plain"))


@contextlib.contextmanager
def stubbed_facade(
    cluster: HazelcastCluster,
    log_dir: Path,
    name: str,
    stubs: Sequence[StubInstance],
    env: dict[str, str] | None = None,
) -> Iterator[Service]:
    """A real facade under gunicorn in front of `stubs`, in a Consul agent of its own (`name`): the stubs are
    registered and in their state (`warning` for a /health of 429, else `passing`) before the facade starts,
    so its first discovery answer has them all. Everything is stopped and deregistered afterwards."""
    agent = isolated_agent(cluster, log_dir, name=name)
    client = agent.client()
    started: list[StubInstance] = []
    facade = None
    try:
        for stub in stubs:
            stub.start(client)
            started.append(stub)
        for stub in stubs:
            state = "warning" if stub.health_status == 429 else "passing"

            def in_state(stub: StubInstance = stub, state: str = state) -> bool:
                return check_status(client, stub.instance_id) == state

            until(in_state, timeout=15, what=f"{stub.instance_id} {state}")
        facade = start_service("facade-service", agent, log_dir, env=env)
        wait_passing(agent, facade)
        yield facade
    finally:
        if facade is not None:
            facade.stop()
        for stub in started:
            stub.stop(client)
        agent.stop()
