"""What the store costs (hazelcast-store/, PostgreSQL): the memory-only system beside the durable one, the
statements PostgreSQL ran for the POST phase (pg_stat_statements), and the restart of a stack of
./scripts/up whose database holds a million messages, then its backup and restore."""

from __future__ import annotations

import collections
import json
import logging
import os
import random
import subprocess
import time
import uuid
from pathlib import Path

import requests

from contracts.log_entry import encode
from devstack import ROOT, eventually
from devstack.postgres import PostgresServer
from servicekit import stack
from stackctl import postgres
from stackctl.stack_status import PortUse, port_is_free

log = logging.getLogger("bench")

# The label of the system whose map and queue stay in memory (the store switched off), for durable_vs_memory.
MEMORY_LABEL = "memory"
RELOAD_MESSAGES = 1_000_000
# 100 characters, as the figure asks.
RELOAD_MESSAGE = "a stored message of a hundred characters, written by the bench straight into PostgreSQL: {n:010d}"


def statements(database: PostgresServer, top: int = 8) -> list[dict]:
    """The statements that took PostgreSQL the most time since the last reset: calls, total and mean ms."""
    rows = database.sql(
        "SELECT calls, round(total_exec_time::numeric, 1), round(mean_exec_time::numeric, 3), rows,"
        " regexp_replace(left(query, 90), '\\s+', ' ', 'g') FROM pg_stat_statements"
        " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        f" ORDER BY total_exec_time DESC LIMIT {top}"
    )
    found = []
    for line in rows.splitlines():
        if line:
            calls, total, mean, count, query = line.split("|", 4)
            found.append({"query": query, "calls": int(calls), "total_ms": float(total), "mean_ms": float(mean),
                          "rows": int(count)})  # fmt: skip
    return found


def _free_offset() -> int:
    defaults = [int(v) for k, v in stack.values().items() if k.endswith("_PORT")]
    for _ in range(200):
        offset = random.randrange(7000, 23000)
        if all(port_is_free(PortUse("p", p + offset)) for p in defaults):
            return offset
    raise RuntimeError("no free port offset for the reload stack")


def phase_reload(home: Path, messages: int = RELOAD_MESSAGES) -> dict:
    """A stack of ./scripts/up of its own: its database filled with `messages` rows by COPY, then
    ./scripts/down and a timed ./scripts/up (it returns once every check passes; a logging instance passes
    once the members loaded the log), then the first GET /facade. Removed with --purge afterwards."""
    home.mkdir(parents=True)
    home.chmod(0o755)
    offset = _free_offset()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "STACK_", "SUPERVISOR_"))}
    env |= {"STACK_RUN_DIR": str(home / "run"), "STACK_LOG_DIR": str(home / "logs"),
            "STACK_PORT_OFFSET": str(offset),
            "CONSUL_HTTP_ADDR": f"127.0.0.1:{stack.port('CONSUL_HTTP_PORT') + offset}"}  # fmt: skip

    def script(*args: str) -> float:
        started = time.monotonic()
        done = subprocess.run([str(ROOT / "scripts" / args[0]), *args[1:]], env=env, capture_output=True, text=True,
                              timeout=900, stdin=subprocess.DEVNULL)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"./scripts/{' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return time.monotonic() - started

    facade = f"http://127.0.0.1:{stack.port('FACADE_PORT') + offset}/facade"
    try:
        script("up")
        database = postgres.Cluster(home / "run" / "postgres", stack.port("POSTGRES_PORT") + offset)
        first = time.time_ns() - messages * 1_000_000
        rows = "".join(
            f"{uuid.uuid4()}\t{encode(RELOAD_MESSAGE.format(n=n), first + n * 1_000_000)}\n" for n in range(messages)
        )
        started = time.monotonic()
        database.psql(None, "-c", "\\copy log_entries (id, entry) FROM STDIN", user=database.user, stdin=rows)
        log.info("  COPY of %s rows: %.1f s", f"{messages:,}", time.monotonic() - started)
        script("down")
        up_s = script("up")
        started = time.monotonic()

        def first_page() -> None:
            answer = requests.get(facade, params={"limit": 1}, timeout=30)
            assert answer.status_code == 200, answer.text
            assert answer.json()["logging"], "an empty first page"

        eventually(first_page, 120, interval=0.5, what="the first page after up")
        get_s = time.monotonic() - started
        log.info("  ./scripts/up with %s messages: %.1f s to every check passing, then %.1f s to the first page",
                 f"{messages:,}", up_s, get_s)  # fmt: skip
        # The backup that restores (docs/DEPLOY.md, "Backups"): taken from the running stack, restored into an
        # empty one (down --purge), which then loads it as it starts.
        backup = home / "log.dump"
        backup_s = script("backup", str(backup))
        script("down", "--purge")
        restore_s = script("up", "--restore", str(backup))
        restored = int(database.psql("SELECT count(*) FROM log_entries", user=database.user).strip())
        if restored != messages:
            raise RuntimeError(f"{restored:,} messages restored of {messages:,}")
        eventually(first_page, 120, interval=0.5, what="the first page after the restore")
        log.info("  ./scripts/backup: %.1f s (%.0f MB); down --purge, then up --restore to every check passing: %.1f s",
                 backup_s, backup.stat().st_size / 1e6, restore_s)  # fmt: skip
        return {"reload_s_1m": round(up_s, 1), "reload_first_page_s_1m": round(get_s, 2), "reload_messages": messages,
                "backup_s_1m": round(backup_s, 1), "backup_mb_1m": round(backup.stat().st_size / 1e6, 1),
                "restore_up_s_1m": round(restore_s, 1)}  # fmt: skip
    finally:
        try:
            script("down", "--purge")
        except RuntimeError as exc:
            log.warning("%s", exc)


def profile_member(pid: int, seconds: float, run, out: Path) -> dict:
    """Java Flight Recorder on one member while `run` loads the stack: where its threads spend their samples.
    Running Java code (jdk.ExecutionSample) by the top frame's method and by who is on the stack (the store,
    the JDBC driver, the pool); threads in native code (jdk.NativeMethodSample) that wait inside the
    PostgreSQL driver, i.e. for the database."""
    recording = out / f"member-{pid}.jfr"
    subprocess.run(["jcmd", str(pid), "JFR.start", "name=bench", "settings=profile", f"filename={recording}"],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    try:
        run()
    finally:
        subprocess.run(["jcmd", str(pid), "JFR.stop", "name=bench"], check=True, capture_output=True, timeout=60)
    printed = subprocess.run(
        ["jfr", "print", "--json", "--events", "jdk.ExecutionSample,jdk.NativeMethodSample", str(recording)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    events = json.loads(printed.stdout)["recording"]["events"]
    running = [e for e in events if e["type"] == "jdk.ExecutionSample"]
    native = [e for e in events if e["type"] == "jdk.NativeMethodSample"]

    def frames(event) -> list[str]:
        trace = event["values"].get("stackTrace") or {}
        # JFR names types with slashes (org/postgresql/...): dots, as Java source writes them.
        named = (f"{f['method']['type']['name']}.{f['method']['name']}" for f in trace.get("frames", []))
        return [name.replace("/", ".") for name in named]

    def share(events, part: str) -> float:
        return sum(any(part in f for f in frames(e)) for e in events) / max(len(events), 1)

    top = collections.Counter(frames(e)[0] for e in running if frames(e))
    return {
        "seconds": seconds,
        "running_samples": len(running),
        "running_in_store_share": round(share(running, "consulservices.store."), 3),
        "running_in_jdbc_share": round(share(running, "org.postgresql."), 3),
        "running_in_pool_share": round(share(running, "com.hazelcast.shaded.com.zaxxer.hikari."), 3),
        "top_methods": [(m, round(c / max(len(running), 1), 3)) for m, c in top.most_common(8)],
        "native_samples": len(native),
        "native_waiting_for_postgres_share": round(share(native, "org.postgresql."), 3),
        "native_top_methods": [
            (m, round(c / max(len(native), 1), 3))
            for m, c in collections.Counter(frames(e)[0] for e in native if frames(e)).most_common(5)
        ],
    }


# PostgreSQL's group commit, asked to wait for company: a committing backend sleeps commit_delay µs when at
# least commit_siblings other transactions are open, so that one WAL flush covers more commits.
COMMIT_DELAY_US = 500
COMMIT_SIBLINGS = 4


def commit_delay_run(database: PostgresServer, system, plan) -> dict:
    """POST /facade on the durable system at the main concurrency, once with commit_delay and once without,
    back to back: what batching the flushes buys when every write commits on its own."""
    from bench import wrk
    from bench.systems import POST_BODY

    def run() -> float:
        return wrk.run(system.stack.url, plan.main_level, plan.seconds, method="POST", body=POST_BODY).rps

    def setting(delay: int, siblings: int) -> None:
        database.cluster.psql(f"ALTER SYSTEM SET commit_delay = {delay}", database="postgres")
        database.cluster.psql(f"ALTER SYSTEM SET commit_siblings = {siblings}", database="postgres")
        database.cluster.psql("SELECT pg_reload_conf()", database="postgres")

    without = run()
    setting(COMMIT_DELAY_US, COMMIT_SIBLINGS)
    try:
        delayed = run()
    finally:
        setting(0, 5)
    log.info("  POST with commit_delay=%d us: %.0f/s, without: %.0f/s", COMMIT_DELAY_US, delayed, without)
    return {"post_rps_commit_delay": delayed, "post_rps_no_commit_delay": without, "commit_delay_us": COMMIT_DELAY_US}
