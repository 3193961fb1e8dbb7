"""The Python side of the durable log, without a cluster: how a store failure is recognised and answered,
the log-size rebuild, the consumer's duplicate drop, the migrations' order and the member's store settings."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from hazelcast.errors import HazelcastError, UndefinedErrorCodeError
from prometheus_client import REGISTRY

from logging_svc import create_app
from logging_svc.settings import LoggingSettings
from logging_svc.store import ID_BYTES, HazelcastMessageLog, LogSize, encode, entry_cost, entry_cost_of_size
from messages_svc.consumer import MessageStore
from servicekit.errors import StoreFailure, store_failure
from servicekit.kvconfig import SharedConfig
from servicekit.settings import SettingsError
from stackctl import hazelcast_member, postgres

REFUSED = (
    "Exception from server: consulservices.store.StoreRefused: storing log entry x: no connection to PostgreSQL:"
    " Could not get Connection from pool: Connection refused\n at consulservices.store.Db.run(Db.java:93)"
)


def test_a_store_failure_is_recognised_in_a_map_error_and_inside_a_queue_error():
    assert store_failure(UndefinedErrorCodeError(REFUSED, "consulservices.store.StoreRefused")) is StoreFailure.REFUSED
    inner = REFUSED.split(": ", 1)[1]
    wrapped = HazelcastError("Exception from server: com.hazelcast.core.HazelcastException: " + inner)
    assert store_failure(wrapped) is StoreFailure.REFUSED
    unknown = HazelcastError("Exception from server: consulservices.store.StoreOutcomeUnknown: the connection broke")
    assert store_failure(unknown) is StoreFailure.OUTCOME_UNKNOWN
    assert store_failure(HazelcastError("Exception from server: java.lang.IllegalStateException: no")) is None


class Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class Counter:
    def __init__(self, total: int = 0):
        self.total = total

    def get(self):
        return Done(self.total)

    def add_and_get(self, delta):
        self.total += delta
        return Done(self.total)


class Marker(dict):
    def put_if_absent(self, key, value):
        return self.setdefault(key, value) if key in self else self.__setitem__(key, value)

    def remove(self, key):
        self.pop(key, None)


class LogMap:
    def __init__(self, entries: dict[str, str], error: Exception | None = None):
        self.entries = entries
        self.error = error

    def blocking(self):
        return self

    def size(self):
        return len(self.entries)

    def aggregate(self, aggregator):
        """The sum of the entry_cost attribute, as the members compute it (hazelcast-store's EntryCost)."""
        assert aggregator.__class__.__name__ == "_LongSumAggregator" and aggregator._attribute_path == "entry_cost"
        if self.error:
            raise self.error
        return sum(entry_cost(key, entry) for key, entry in self.entries.items())

    def put_if_absent(self, key, value):
        if self.error:
            raise self.error
        return self.entries.setdefault(key, value) if key in self.entries else self.entries.__setitem__(key, value)


class StoreHazelcast:
    connected = True

    def __init__(self, log_map: LogMap, counter: Counter, marker: Marker):
        self._map, self.counter, self.marker = log_map, counter, marker

    def shared_config(self) -> SharedConfig:
        return SharedConfig("dev", ("127.0.0.1:1",), "messages-log", "messages-queue")

    def get_map(self, name: str, timeout: float | None = None):
        """The log's map, or (blocking) the size's rebuild marker."""
        return {"messages-log": self._map, "messages-log-bytes.rebuilt": self}[name]

    def blocking(self):
        return self.marker

    def get_pn_counter(self, name: str):
        assert name == "messages-log-bytes"
        return self.counter


def entries(*messages: str) -> dict[str, str]:
    return {str(uuid.uuid4()): encode(m, 1_000 + n) for n, m in enumerate(messages)}


def test_the_first_worker_after_a_restart_rebuilds_the_size_to_what_the_map_holds_and_a_second_adds_nothing():
    held = entries("a", "été", "x" * 4000)
    expected = sum(entry_cost(k, v) for k, v in held.items())
    counter, marker = Counter(), Marker()
    first = LogSize(StoreHazelcast(LogMap(held), counter, marker))
    first.load()
    assert counter.total == expected and first.loaded
    marker.clear()  # the marker's partition lost with two members, the counter alive on the third
    LogSize(StoreHazelcast(LogMap(held), counter, marker)).load()
    assert counter.total == expected
    other = LogSize(StoreHazelcast(LogMap(held), counter, marker))
    other.load()  # the marker is claimed: this worker only waits for the map
    assert counter.total == expected and other.loaded


def test_entries_counted_since_the_restart_are_not_counted_twice_by_the_rebuild():
    held = entries("old", "new")
    new_id = list(held)[1]
    counter = Counter(entry_cost(new_id, held[new_id]))  # a worker counted "new" before the rebuild ran
    LogSize(StoreHazelcast(LogMap(held), counter, Marker())).load()
    assert counter.total == sum(entry_cost(k, v) for k, v in held.items())


def test_a_failed_rebuild_gives_the_claim_back_and_the_worker_is_not_ready():
    marker = Marker()
    size = LogSize(StoreHazelcast(LogMap(entries("a"), HazelcastError("loading")), Counter(), marker))
    with pytest.raises(HazelcastError):
        size.load()
    assert marker == {} and not size.loaded


def test_entry_cost_of_a_size_is_entry_cost():
    key, entry = str(uuid.uuid4()), encode("ünïcode and more", 1)
    assert entry_cost_of_size(ID_BYTES + len(entry.encode())) == entry_cost(key, entry)


def test_a_write_the_database_refused_is_a_503_that_says_nothing_was_stored():
    log_map = LogMap({}, UndefinedErrorCodeError(REFUSED, "consulservices.store.StoreRefused"))
    store = HazelcastMessageLog(StoreHazelcast(log_map, Counter(), Marker()), capacity_bytes=1 << 40)
    store.size._synced.set()
    app = create_app(LoggingSettings.from_env("logging-service", 8081, env={}), message_log=store)
    failures = {"structure": "log", "outcome": "refused"}
    before = REGISTRY.get_sample_value("store_failures_total", failures) or 0
    answer = app.test_client().post("/logging", json={"id": str(uuid.uuid4()), "msg": "hi"})
    assert answer.status_code == 503
    error = "the log's database (PostgreSQL) is unavailable: nothing was stored"
    assert answer.json == {"error": error, "stored": False}
    assert store.size.seen == 0
    # What the DatabaseUnreachable alert watches (conf/prometheus/alerts.yml).
    assert REGISTRY.get_sample_value("store_failures_total", failures) == before + 1


def test_the_log_size_and_capacity_are_exported_at_each_status():
    store = HazelcastMessageLog(StoreHazelcast(LogMap({}), Counter(), Marker()), capacity_bytes=1000)
    store.size._bytes = 930
    assert store.status() == {"bytes": 930, "capacity_bytes": 1000}
    # What the LogAlmostFull alert watches (conf/prometheus/alerts.yml).
    assert REGISTRY.get_sample_value("log_bytes") == 930
    assert REGISTRY.get_sample_value("log_capacity_bytes") == 1000


def test_a_consumer_drops_a_message_whose_id_it_already_holds():
    store = MessageStore(kept=2)
    assert store.append("a", "id-a") and store.append("b", "id-b")
    assert not store.append("a again", "id-a")
    assert store.snapshot() == ["a", "b"] and store.status()["duplicates"] == 1
    assert store.append("c", "id-c")  # "a" is let go, and its id with it
    assert store.append("a", "id-a") and store.snapshot() == ["c", "a"]
    assert store.append("no id", "") and store.append("no id", "")


def test_migrations_run_in_order_without_a_gap(tmp_path, monkeypatch):
    assert postgres.known_version() == len(list(postgres.MIGRATIONS.glob("*.sql"))) >= 1
    for name in ("0001_a.sql", "0003_c.sql"):
        (tmp_path / name).write_text("SELECT 1;")
    monkeypatch.setattr(postgres, "MIGRATIONS", tmp_path)
    with pytest.raises(postgres.MigrationError, match="without a gap"):
        postgres.migrations()
    (tmp_path / "0002-b.sql").write_text("SELECT 1;")
    with pytest.raises(postgres.MigrationError, match="NNNN_name"):
        postgres.migrations()


def test_a_member_writes_through_only_when_told_the_database_and_names_its_log_map_and_queue():
    jar = hazelcast_member.DEFAULT_JAR
    off = hazelcast_member.hazelcast_member_command(5701, "dev", "127.0.0.1:5701", jar, names=("log", "q"))
    assert "-Dhz.store.enabled=false" in off and "-Dhz.log.map=log" in off and "-Dhz.queue=q" in off
    settings = postgres.StoreSettings("jdbc:postgresql://127.0.0.1:5433/messages", "messages", Path("/p"), 1)
    on = hazelcast_member.hazelcast_member_command(5701, "dev", "127.0.0.1:5701", jar, store=settings)
    assert "-Dhz.store.enabled=true" in on and "-Dhz.db.url=jdbc:postgresql://127.0.0.1:5433/messages" in on
    assert not any("password" in arg.lower() for arg in on)
    classpath = on[on.index("-cp") + 1].split(":")
    assert [Path(p).name for p in classpath[1:]] == [p.name for p in hazelcast_member.STORE_JARS]
    assert hazelcast_member.store_mode({}) == "postgres"
    assert hazelcast_member.store_mode({"HAZELCAST_STORE": "off"}) == "off"
    with pytest.raises(SettingsError):
        hazelcast_member.store_mode({"HAZELCAST_STORE": "sqlite"})


def test_the_password_files_are_private_from_their_first_byte(tmp_path):
    postgres._write_private(tmp_path / "pgpass", "*:*:db:user:secret\n")
    assert (tmp_path / "pgpass").stat().st_mode & 0o777 == 0o600
