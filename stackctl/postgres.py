"""The stack's PostgreSQL, behind the Hazelcast members' MapStore and QueueStore (hazelcast-store/): a database
cluster of its own in a directory, run by the `postgres` system user when the caller is root (initdb refuses
root), its schema (db/migrations/), its Consul service, and what a member reads to reach it.

A directory (Cluster.home) holds:
    data/       the database cluster (initdb), owned by the user that runs the server, mode 0700
    socket/     the server's Unix socket; the owner's setup connects through it (trust, the directory is 0700)
    password    the application role's password, 0600, made once by `init`
    pgpass      the same as a libpq password file, 0600: the members' JDBC driver reads it (PGPASSFILE), so
                the password is never in Consul KV nor in a process's arguments
TCP connections (the members') are checked with scram-sha-256 and accepted on 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import consul

from servicekit import kvconfig, stack
from servicekit.discovery import usable_instances
from servicekit.settings import SettingsError, instance_id

log = logging.getLogger(__name__)

SERVICE = "postgres"
KEY_DATABASE = "config/postgres/database"
KEY_USER = "config/postgres/user"
MIGRATIONS = stack.ROOT / "db" / "migrations"
_MIGRATION = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")
# Every psql or initdb call is bounded: a server that does not answer must not hang ./scripts/up.
COMMAND_TIMEOUT = 120.0
# A backup or a restore of the whole log: bounded too, far above a million messages' (docs/DEPLOY.md).
DUMP_TIMEOUT = 3600.0
# What the server runs with beside its defaults. synchronous_commit and fsync are PostgreSQL's defaults and
# are written out because the project's promise rests on them: a commit returns once its WAL is flushed to
# disk (docs/API.md, "What a 201 promises"). pg_stat_statements is for ./scripts/bench's account of the time.
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "on",
    "synchronous_commit": "on",
    "shared_preload_libraries": "'pg_stat_statements'",
    "max_connections": "100",
}


class MigrationError(RuntimeError):
    """The database's schema cannot be brought to this checkout's: named in the message."""


def bin_dir() -> Path:
    """The server's programs: POSTGRES_BIN, else Debian's newest /usr/lib/postgresql/<version>/bin."""
    if os.environ.get("POSTGRES_BIN"):
        return Path(os.environ["POSTGRES_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise SettingsError("no PostgreSQL server in /usr/lib/postgresql: run ./scripts/install")
    return found[-1].parent


def migrations() -> list[tuple[int, Path]]:
    """db/migrations/NNNN_name.sql in order; the numbers run 1, 2, 3... without a gap."""
    found = []
    for path in sorted(MIGRATIONS.glob("*.sql")):
        match = _MIGRATION.fullmatch(path.name)
        if match is None:
            raise MigrationError(f"{path.name} is not named NNNN_name.sql")
        found.append((int(match[1]), path))
    numbers = [number for number, _ in found]
    if numbers != list(range(1, len(numbers) + 1)):
        raise MigrationError(f"db/migrations/ numbers {numbers}: they must run 1, 2, 3... without a gap")
    return found


def known_version() -> int:
    """The schema version this checkout knows: its newest migration."""
    return len(migrations())


@dataclass(frozen=True)
class Cluster:
    home: Path
    port: int
    database: str = "messages"
    user: str = "messages"
    # A socket's path holds at most 107 bytes: a deep `home` (the tests') puts its socket elsewhere.
    socket_path: Path | None = None

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def socket_dir(self) -> Path:
        if self.socket_path is not None:
            return self.socket_path
        inside = self.home / "socket"
        if len(f"{inside}/.s.PGSQL.{self.port}") <= 107:
            return inside
        # Too deep for a socket: a directory of its own in /tmp, named after the cluster.
        return Path(tempfile.gettempdir()) / f"pg-{hashlib.sha256(str(self.home).encode()).hexdigest()[:12]}"

    @property
    def password_file(self) -> Path:
        return self.home / "password"

    @property
    def pgpass(self) -> Path:
        return self.home / "pgpass"

    @property
    def jdbc_url(self) -> str:
        return f"jdbc:postgresql://127.0.0.1:{self.port}/{self.database}"

    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").is_file()

    def as_owner(self, command: list[str]) -> list[str]:
        """The command as the server's user: `postgres` when we are root, ourselves otherwise."""
        if os.geteuid() != 0:
            return command
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *command]

    def init(self) -> bool:
        """initdb and the password files, once; True when this call made the cluster."""
        if self.initialized():
            return False
        self.home.mkdir(parents=True, exist_ok=True)
        if self.data.exists():
            shutil.rmtree(self.data)  # a half-made cluster from an interrupted init
        for path in (self.data, self.socket_dir):
            path.mkdir(mode=0o700, exist_ok=path != self.data)
            if os.geteuid() == 0:
                owner = pwd.getpwnam("postgres")
                os.chown(path, owner.pw_uid, owner.pw_gid)
        if not self.password_file.exists():
            _write_private(self.password_file, secrets.token_urlsafe(24) + "\n")
        _write_private(self.pgpass, f"*:*:{self.database}:{self.user}:{self.password()}\n")
        # The bootstrap superuser is `postgres`, reached through the private socket only.
        done = subprocess.run(
            self.as_owner(
                [str(bin_dir() / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--locale=C",
                 "--auth-local=trust", "--auth-host=scram-sha-256"]
            ),
            capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
        )  # fmt: skip
        if done.returncode != 0:
            raise MigrationError(
                f"initdb failed in {self.data} (as root, it runs as the postgres user, which must reach that"
                f" directory): {done.stderr.strip()}"
            )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n# stackctl/postgres.py\n")
            conf.writelines(f"{name} = {value}\n" for name, value in SERVER_SETTINGS.items())
        log.info("made a PostgreSQL cluster in %s", self.data)
        return True

    def password(self) -> str:
        return self.password_file.read_text().strip()

    def server_command(self) -> list[str]:
        """The postmaster in the foreground, for a supervisor; SIGINT is its fast shutdown."""
        return self.as_owner(
            [str(bin_dir() / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.socket_dir)]
        )

    def psql(
        self,
        sql: str | None = None,
        *args: str,
        user: str = "postgres",
        database: str | None = None,
        stdin: str | None = None,
    ) -> str:
        """psql through the socket, stopping at the first error; its output, unaligned."""
        command = self._client_command("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", user=user)
        command += ["-d", database or self.database]
        if sql is not None:
            command += ["-c", sql]
        done = subprocess.run(
            [*command, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            env={**os.environ, "PGCONNECT_TIMEOUT": "5"},
        )
        if done.returncode != 0:
            raise MigrationError(f"psql failed: {done.stderr.strip()}")
        return done.stdout

    def ready(self) -> bool:
        done = subprocess.run(self._client_command("pg_isready", "-q", "-t", "2"), capture_output=True, timeout=10)
        return done.returncode == 0

    def _client_command(self, program: str, *args: str, user: str = "postgres") -> list[str]:
        """A libpq program (psql, pg_isready, pg_dump, pg_restore) as `user`, through the private socket."""
        return [str(bin_dir() / program), "-h", str(self.socket_dir), "-p", str(self.port), "-U", user, *args]

    def dump(self, path: Path) -> None:
        """The database, schema and rows, as pg_dump's custom format in `path`: one snapshot (what was committed
        before it began, nothing after), 0600 since it holds every message. Written beside `path` and renamed
        once whole: a failed dump leaves no half file, and an earlier backup at `path` stays until then."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600 from the first byte
        try:
            with os.fdopen(fd, "wb") as out:
                done = subprocess.run(
                    self._client_command("pg_dump", "--format=custom", "-d", self.database),
                    stdout=out, stderr=subprocess.PIPE, text=False, timeout=DUMP_TIMEOUT,
                )  # fmt: skip
            if done.returncode != 0:
                raise MigrationError(f"pg_dump failed: {done.stderr.decode(errors='replace').strip()}")
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def holds_a_log(self) -> bool:
        """Whether the database has the log's schema already (migrated, or restored)."""
        found = self.psql("SELECT to_regclass('public.schema_version') IS NOT NULL", database=self.database)
        return found.strip() == "t"

    def restore(self, path: Path) -> None:
        """A dump (`dump`) into this database, which must not hold a log yet; all of it or nothing."""
        if not path.is_file():
            raise MigrationError(f"no backup at {path}")
        if self.holds_a_log():
            raise MigrationError(
                f"the database {self.database!r} already holds a log: a backup is restored into an empty stack "
                "(./scripts/down --purge, then ./scripts/up --restore FILE)"
            )
        done = subprocess.run(
            self._client_command("pg_restore", "--exit-on-error", "--single-transaction", "-d", self.database,
                                 str(path)),
            capture_output=True, text=True, timeout=DUMP_TIMEOUT,
        )  # fmt: skip
        if done.returncode != 0:
            raise MigrationError(f"pg_restore of {path} failed, nothing restored: {done.stderr.strip()}")
        log.info("restored %s", path)

    def setup(self, restore: Path | None = None) -> None:
        """The application role (its password read from stdin, never an argument) and its database, the
        statistics extension, then the migrations. Idempotent: ./scripts/up runs it on every start. With
        `restore`, a backup goes into the new database first, and the migrations bring it up to this checkout's."""
        exists = self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{self.user}'", database="postgres")
        verb = "ALTER" if exists.strip() else "CREATE"
        # Through stdin: a password in psql's arguments would show in the process list.
        self.psql(None, database="postgres", stdin=f"{verb} ROLE \"{self.user}\" LOGIN PASSWORD '{self.password()}';\n")
        if not self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'", database="postgres").strip():
            self.psql(f'CREATE DATABASE "{self.database}" OWNER "{self.user}"', database="postgres")
        if restore is not None:
            self.restore(restore)
        try:
            self.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            migrate(self)
        except MigrationError:
            if restore is not None:
                # A backup this checkout cannot run (made by newer code): the database goes back to empty, so
                # that the stack is as before the restore, and another backup can be restored into it.
                self.psql(f'DROP DATABASE "{self.database}"', database="postgres")
                self.psql(f'CREATE DATABASE "{self.database}" OWNER "{self.user}"', database="postgres")
            raise


def _write_private(path: Path, text: str) -> None:
    """Written 0600 from the first byte: the file never exists with wider rights."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def migrate(cluster: Cluster) -> int:
    """Apply the migrations the database has not had, each in one transaction with its schema_version row;
    returns the version reached. A database at a newer version than this checkout knows is an error."""
    known = migrations()
    cluster.psql(
        "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())",
        user=cluster.user,
    )
    current = int(cluster.psql("SELECT coalesce(max(version), 0) FROM schema_version", user=cluster.user).strip())
    if current > len(known):
        raise MigrationError(
            f"the database {cluster.database!r} is at schema version {current}, newer than this checkout's "
            f"{len(known)} (db/migrations/): it was migrated by newer code; run that code, or restore a backup"
        )
    for number, path in known[current:]:
        cluster.psql(
            None,
            "--single-transaction",
            "-f",
            str(path),
            "-c",
            f"INSERT INTO schema_version (version, name) VALUES ({number}, '{path.name}')",
            user=cluster.user,
        )
        log.info("applied %s", path.name)
    return len(known)


@dataclass(frozen=True)
class StoreSettings:
    """What a member's MapStore and QueueStore need (conf/hazelcast.xml's data connection and stores)."""

    jdbc_url: str
    user: str
    pgpass: Path
    schema_version: int

    def properties(self) -> list[str]:
        return [
            "-Dhz.store.enabled=true",
            f"-Dhz.db.url={self.jdbc_url}",
            f"-Dhz.db.user={self.user}",
            f"-Dhz.db.schema={self.schema_version}",
        ]


# A member with the store switched off (HAZELCAST_STORE=off, or the tests' memory-only clusters): the
# data connection is still declared in conf/hazelcast.xml, but its pool is made only on first use.
STORE_OFF = ["-Dhz.store.enabled=false", "-Dhz.db.url=jdbc:postgresql:none", "-Dhz.db.user=none", "-Dhz.db.schema=0"]


def store_settings(client: consul.Consul, pgpass: Path) -> StoreSettings:
    """The database a member writes through to: the address of a usable `postgres` instance in Consul, the
    database and user from Consul KV, the password from the pgpass file."""
    found = usable_instances(client, SERVICE)
    if not found:
        raise SettingsError(f"no usable {SERVICE!r} instance in Consul: ./scripts/up starts PostgreSQL first")
    if not pgpass.is_file():
        raise SettingsError(f"no password file at {pgpass}")
    instance = sorted(found, key=lambda i: i.id)[0]
    database = kvconfig.get_value(client, KEY_DATABASE)
    return StoreSettings(
        jdbc_url=f"jdbc:postgresql://{instance.address}:{instance.port}/{database}",
        user=kvconfig.get_value(client, KEY_USER),
        pgpass=pgpass,
        schema_version=known_version(),
    )


def service_definition(port: int, address: str = "127.0.0.1", host: str | None = None) -> dict:
    """The database as a Consul service (agent config-file form), with a TCP check."""
    return {
        "id": instance_id(SERVICE, port, host),
        "name": SERVICE,
        "address": address,
        "port": port,
        "check": {"tcp": f"{address}:{port}", "interval": "2s", "timeout": "1s"},
    }


def register(client: consul.Consul, port: int) -> None:
    """The same definition through the agent's API, for an agent that does not load it from a file."""
    definition = service_definition(port)
    client.agent.service.register(
        SERVICE,
        service_id=definition["id"],
        address=definition["address"],
        port=port,
        check=consul.Check.tcp(definition["address"], port, interval="2s", timeout="1s"),
    )


# The operator commands (python -m stackctl postgres-...), used by ./scripts/up.
def _cluster(args) -> Cluster:
    return Cluster(Path(args.home).resolve(), args.port)


def _init(args) -> int:
    try:
        _cluster(args).init()
    except MigrationError as exc:
        log.error("%s", exc)
        return 1
    return 0


def _server(args) -> int:
    """Replace this process with the server (supervisord's program): supervisord keeps its pid."""
    command = _cluster(args).server_command()
    os.execvp(command[0], command)


def _setup(args) -> int:
    import time

    cluster = _cluster(args)
    deadline = time.monotonic() + args.timeout
    while not cluster.ready():
        if time.monotonic() > deadline:
            log.error("PostgreSQL did not accept connections on port %d within %.0f s", cluster.port, args.timeout)
            return 1
        time.sleep(0.2)
    try:
        cluster.setup(restore=args.restore)
    except MigrationError as exc:
        log.error("%s", exc)
        return 1
    log.info("database %r at schema version %d", cluster.database, known_version())
    return 0


def _dump(args) -> int:
    try:
        _cluster(args).dump(args.file)
    except MigrationError as exc:
        log.error("%s", exc)
        return 1
    return 0


def _service(args) -> int:
    import json
    import tempfile

    path = Path(args.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump({"services": [service_definition(args.port)]}, f, indent=1)
    os.replace(tmp, path)
    return 0


def add_commands(sub, client) -> None:
    """The postgres-* subcommands of python -m stackctl; `client` makes a Consul client when one is needed."""
    for name, func, text in (
        ("postgres-init", _init, "make the database cluster in HOME once (initdb, password files)"),
        ("postgres-server", _server, "run the server of HOME in the foreground"),
        ("postgres-setup", _setup, "wait for the server, then its role, database and migrations"),
        ("postgres-dump", _dump, "a backup of the database into FILE (pg_dump, custom format, 0600)"),
    ):
        parser = sub.add_parser(name, help=text)
        parser.add_argument("--home", required=True)
        parser.add_argument("--port", type=int, required=True)
        if func is _setup:
            parser.add_argument("--timeout", type=float, default=60.0)
            parser.add_argument("--restore", type=Path, metavar="FILE", help="a backup, into an empty database")
        if func is _dump:
            parser.add_argument("file", type=Path)
        parser.set_defaults(func=func)
    service = sub.add_parser("postgres-service", help="write the database as a Consul agent config file")
    service.add_argument("path")
    service.add_argument("port", type=int)
    service.set_defaults(func=_service)
    reg = sub.add_parser("register-postgres", help="register the database through the agent's API")
    reg.add_argument("port", type=int)
    reg.set_defaults(func=lambda args: _register(client(), args.port))


def _register(client: consul.Consul, port: int) -> int:
    register(client, port)
    return 0
