"""A PostgreSQL server of its own on a free loopback port, made and migrated the way ./scripts/up does it
(stackctl/postgres.py), for the tests and the bench."""

from __future__ import annotations

import shutil
import signal
import tempfile
from pathlib import Path

import consul

from devstack.ports import free_port
from devstack.processes import Proc, eventually
from stackctl import postgres


class PostgresServer:
    """Its cluster lives in `home` (beside the test's logs): stopped and started again, it keeps its data."""

    def __init__(self, home: Path, log_dir: Path, port: int | None = None, name: str = "postgres"):
        socket_dir = Path(tempfile.mkdtemp(prefix="pg-"))
        self.cluster = postgres.Cluster(home.resolve(), port or free_port(), socket_path=socket_dir)
        self.log_dir = log_dir
        self.name = name
        self.proc: Proc | None = None

    @property
    def port(self) -> int:
        return self.cluster.port

    def start(self, timeout: float = 60.0) -> PostgresServer:
        """initdb on first start, then the server, the role, the database and the migrations."""
        self.cluster.init()
        self.proc = Proc(
            f"{self.name}-{self.port}", self.cluster.server_command(), self.log_dir / f"{self.name}-{self.port}.log"
        ).start()

        def ready() -> None:
            assert self.proc is not None and self.proc.alive(), f"{self.name} exited:\n{self.proc and self.proc.tail()}"
            assert self.cluster.ready(), f"{self.name} not accepting connections yet"

        eventually(ready, timeout, interval=0.2, what=f"PostgreSQL on port {self.port}")
        self.cluster.setup()
        return self

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open connections are closed, what was committed stays."""
        if self.proc is not None:
            self.proc.stop(signal.SIGINT, timeout=30)

    def close(self) -> None:
        """Stopped for good: its socket's directory in /tmp goes too (the data stays beside the logs)."""
        self.stop()
        if self.cluster.socket_path is not None:
            shutil.rmtree(self.cluster.socket_path, ignore_errors=True)

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.kill9()

    def sql(self, query: str) -> str:
        """One statement as the application role, through the socket; psql's unaligned output."""
        return self.cluster.psql(query, user=self.cluster.user)

    def register(self, client: consul.Consul) -> None:
        """As ./scripts/up does: the service `postgres` with its check, and the database and user in KV."""
        postgres.register(client, self.port)
        client.kv.put(postgres.KEY_DATABASE, self.cluster.database)
        client.kv.put(postgres.KEY_USER, self.cluster.user)

    def store_settings(self) -> postgres.StoreSettings:
        return postgres.StoreSettings(
            self.cluster.jdbc_url, self.cluster.user, self.cluster.pgpass, postgres.known_version()
        )
