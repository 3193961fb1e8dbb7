"""The stack on several simulated hosts (devstack.hosts, devstack.host_stack): three Consul servers, three
application hosts each with a client agent, a Hazelcast member and every service.

One simulation for the module, with a namespace prefix of its own so the tests run beside
`./scripts/hosts up`. The tests that break something come last, each leaving the hosts whole for the next:
the leader's host is killed and started again, app3 is killed and started again, and app3 is cut off and
healed at the very end. Making namespaces needs root: without it the fixture fails, it never skips.
"""

from __future__ import annotations

import collections
import contextlib
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import consul
import hazelcast
import psutil
import pytest
import requests

from devstack import Load, eventually, host_config, read_all, record
from devstack import hosts as hosts_module
from devstack.host_stack import SERVERS, HostStack, assert_absent, assert_present
from devstack.hosts import Hosts
from devstack.processes import ROOT
from facade.settings import FacadeSettings
from servicekit import kvconfig
from servicekit.registration import agent_self, loopback_warning
from servicekit.settings import Settings
from stackctl import maintenance
from stackctl.hazelcast_member import member_property

# One worker for the module: its tests share the simulation `sim`, which every worker would build again.
pytestmark = pytest.mark.xdist_group("hosts")

APPS = ("app1", "app2", "app3")


@pytest.fixture(scope="module")
def sim(log_dir):
    prefix = f"ht{uuid.uuid4().hex[:6]}"
    stack = HostStack(log_dir / f"hosts-{prefix}", prefix, apps=len(APPS))
    try:
        stack.up(timeout=480)
        yield stack
    finally:
        stack.down()
        assert not [name for name in hosts_module.namespaces() if name.startswith(f"{prefix}-")]


def host_of(instance_id: str) -> str:
    """`logging-service-app2-8081` -> `app2`: each host's processes see the host's name as their hostname."""
    return instance_id.rsplit("-", 2)[-2]


def post(url: str, msg: str, session: requests.Session | None = None) -> requests.Response:
    return (session or requests).post(url, json={"msg": msg}, timeout=15)


def passing_hosts(stack: HostStack, service: str, asked: str = "app1") -> set[str]:
    """The hosts of `service`'s passing instances, as `asked`'s agent (the one its facade uses) says."""
    _, entries = stack.consul(asked).health.service(service, passing=True)
    return {entry["Node"]["Node"] for entry in entries}


@pytest.fixture
def started():
    """Popen, with every process it started killed and waited for even when the test fails."""
    procs: list[subprocess.Popen] = []

    def start(argv: list[str]) -> subprocess.Popen:
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return procs[-1]

    try:
        yield start
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


def test_a_host_is_a_namespace_reachable_from_the_others_until_cut_and_gone_after_down(started):
    prefix = f"hn{uuid.uuid4().hex[:6]}"
    hosts = Hosts(prefix)
    try:
        hosts.create()
        hosts.add("a", "127.100.0.21")
        hosts.add("b", "127.100.0.22")
        server = started(hosts.command("b", ["python3", "-m", "http.server", "--bind", "127.100.0.22", "8000"]))

        def fetch(timeout: float = 2.0) -> str:
            argv = [
                "curl",
                "-s",
                "-m",
                str(timeout),
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://127.100.0.22:8000/",
            ]
            return hosts.run("a", argv).stdout

        eventually(lambda: _equal(fetch(), "200"), 20, interval=0.2, what="b serves a")
        assert hosts.run("b", ["hostname"]).stdout.strip() == "b"
        assert hosts.addr("b") == "127.100.0.22"
        with pytest.raises(requests.ConnectionError):
            requests.get("http://127.100.0.22:8000/", timeout=2)  # the machine's own namespace has no route
        with hosts.entered():
            assert requests.get("http://127.100.0.22:8000/", timeout=2).status_code == 200

        hosts.cut("b")
        assert hosts.link("b") == "DOWN"
        assert fetch(timeout=1) == "000"
        hosts.heal("b")
        eventually(lambda: _equal(fetch(), "200"), 20, interval=0.2, what="b serves a after the heal")

        hosts.kill("b")
        assert server.wait(10) == -9
    finally:
        # As after a crash: a new object that knows only the prefix finds the namespaces.
        removed = hosts_module.down(prefix)
    assert set(removed) == {f"{prefix}-net", f"{prefix}-a", f"{prefix}-b"}
    assert not [name for name in hosts_module.namespaces() if name.startswith(f"{prefix}-")]
    assert hosts_module.down(prefix) == []


def test_a_host_whose_build_failed_is_removed_and_a_half_built_one_is_built_again():
    prefix = f"hb{uuid.uuid4().hex[:6]}"
    hosts = Hosts(prefix)
    try:
        hosts.create()
        with pytest.raises(RuntimeError):
            hosts.add("a", "127.100.0.300")  # `ip addr add` refuses it, after the namespace and its link exist
        assert f"{prefix}-a" not in hosts_module.namespaces()
        # As a run killed right after `ip netns add` leaves it: the namespace, and nothing in it.
        subprocess.run(["ip", "netns", "add", f"{prefix}-b"], check=True, timeout=30)
        hosts.add("b", "127.100.0.22")
        shown = hosts.run("b", ["ip", "-4", "-o", "addr", "show", "dev", "eth0", "up"]).stdout
        assert "inet 127.100.0.22/24" in shown, shown
        assert hosts.link("b") == "UP"
    finally:
        hosts_module.down(prefix)
    assert not hosts_module.owned(prefix, hosts_module.namespaces())


@pytest.mark.parametrize("keep", [False, True])
def test_a_failed_up_says_what_failed_and_removes_what_it_made_unless_kept(keep, tmp_path):
    prefix = f"hf{uuid.uuid4().hex[:6]}"
    (tmp_path / "consul1").write_text("a file where the host's directory goes: the up fails after the hosts exist")
    argv = [sys.executable, "-m", "devstack.host_stack", "--run-dir", str(tmp_path), "up", "--prefix", prefix]
    try:
        done = subprocess.run(argv + ["--keep"] * keep, capture_output=True, text=True, timeout=120, cwd=ROOT)
        left = hosts_module.owned(prefix, hosts_module.namespaces())
    finally:
        hosts_module.down(prefix)
    assert done.returncode == 1
    assert "up failed: NotADirectoryError" in done.stderr and "Traceback" not in done.stderr, done.stderr
    if keep:
        assert f"{prefix}-consul1" in left and "./scripts/hosts down" in done.stderr
    else:
        assert left == []


def _equal(actual, expected) -> None:
    assert actual == expected, f"{actual!r} != {expected!r}"


def test_two_simulations_on_the_same_addresses_at_once_each_reach_only_their_own_hosts(started, tmp_path):
    """Each simulation is a network of its own (its bridge lives in its own namespace), so two of them, a run's
    and another run's or ./scripts/hosts's, may use the same addresses of 127.100.0.0/24 side by side."""
    sims = {name: Hosts(f"hi{uuid.uuid4().hex[:6]}") for name in ("one", "two")}
    try:
        for name, hosts in sims.items():
            hosts.create()
            hosts.add("a", "127.100.0.21")
            hosts.add("b", "127.100.0.22")
            (tmp_path / name).mkdir()
            (tmp_path / name / "who").write_text(name)
            started(hosts.command("b", ["python3", "-m", "http.server", "--bind", "127.100.0.22", "--directory",
                                        str(tmp_path / name), "8000"]))  # fmt: skip

        def who(hosts: Hosts) -> str:
            return hosts.run("a", ["curl", "-s", "-m", "2", "http://127.100.0.22:8000/who"]).stdout

        for name, hosts in sims.items():
            eventually(lambda hosts=hosts, name=name: _equal(who(hosts), name), 20, interval=0.2, what=f"{name}'s b")
            with hosts.entered():
                assert requests.get("http://127.100.0.22:8000/who", timeout=2).text == name
    finally:
        for hosts in sims.values():
            hosts.down()


def test_posts_to_one_facade_are_logged_on_several_hosts_and_gets_read_other_hosts(sim):
    with sim.entered():
        url = sim.facade_url("app1")
        session = requests.Session()
        logged_by = []
        for n in range(30):
            response = post(url, f"across-{n}", session)
            assert response.status_code == 201, response.text
            logged_by.append(response.json()["logged_by"])
        assert len({host_of(i) for i in logged_by}) >= 2, logged_by
        # Each instance says so in its own log too.
        for instance in set(logged_by):
            host = host_of(instance)
            assert instance in sim.log_path(host, "logging").read_text(errors="replace")

        read_from = set()
        for _ in range(20):
            response = session.get(url, timeout=15)
            assert response.status_code == 200, response.text
            read_from.add(host_of(response.json()["messages_from"]))
        assert read_from - {"app1"}, f"every GET read app1's messages instance: {read_from}"
        log = read_all(url, "logging")
        assert {f"across-{n}" for n in range(30)} <= set(log)


# The members drop a silent member after this long (conf/hazelcast.xml), and the facade answers within this.
MEMBERS_DETECT_S = float(member_property("hazelcast.max.no.heartbeat.seconds"))
DEADLINE_S = FacadeSettings.from_env("facade-service", 8080, env={}).request_deadline
# What the answer may take beyond the facade's deadline: the request's own parsing, queueing and transfer.
ANSWER_SLACK_S = 0.5
# As `curl -m 10` in issue 18's reproduction: a POST that takes this long is a stall, whatever it answers.
CLIENT_LIMIT_S = 10.0


def queue_owner(stack: HostStack) -> str:
    """The application host whose member owns the queue's partition: cut off, it is on every POST's way."""
    config = kvconfig.load(stack.consul())
    client = hazelcast.HazelcastClient(
        cluster_name=config.cluster_name, cluster_members=list(config.members), cluster_connect_timeout=30
    )
    try:
        partitions = client.partition_service

        def owner() -> str:
            uuid_ = partitions.get_partition_owner(partitions.get_partition_id(config.queue_name))
            found = [m.address.host for m in client.cluster_service.get_members() if m.uuid == uuid_]
            assert found, "no partition table yet"
            return found[0]

        address = eventually(owner, 30, interval=0.2, what="the queue's owner")
    finally:
        client.shutdown()
    return next(host for host in stack.apps if stack.addr(host) == address)


@dataclass
class Answer:
    started: float  # seconds after the cut
    seconds: float
    status: int | None  # None: no answer within CLIENT_LIMIT_S (or no connection)
    retry_after: str | None
    body: dict | None

    @property
    def retryable_503(self) -> bool:
        return self.status == 503 and self.retry_after is not None and self.retry_after.isdigit()


def post_answer(session: requests.Session, url: str, msg: str, since: float) -> Answer:
    started = time.monotonic()
    try:
        response = session.post(url, json={"msg": msg}, timeout=CLIENT_LIMIT_S)
    except requests.RequestException:
        return Answer(started - since, time.monotonic() - started, None, None, None)
    try:
        body = response.json()
    except ValueError:
        body = None
    seconds = time.monotonic() - started
    return Answer(started - since, seconds, response.status_code, response.headers.get("Retry-After"), body)


@contextlib.contextmanager
def critical_instances(stack: HostStack, hosts: tuple[str, ...], asked: str) -> Iterator[set[str]]:
    """Every service instance on `hosts` that `asked`'s agent reported critical while the block ran
    (looked at every 0.5 s, on a thread of its own)."""
    seen: set[str] = set()
    client = stack.consul(asked, timeout=2.0)

    def look() -> None:
        seen.update(c["ServiceID"] for c in client.health.state("critical")[1] if c["Node"] in hosts and c["ServiceID"])

    with watching(look, every=0.5):  # inside sim.entered(): its thread inherits the namespace
        yield seen


def test_after_a_cut_posts_through_another_host_wait_at_most_the_deadline_and_all_succeed_once_the_members_drop_it(
    sim, log_dir
):
    """Issue 18's reproduction: within a minute of `up` and right after 30 POSTs, the host whose member owns
    the queue is cut off; then POSTs one after another through another host's facade, as curl -m 10 would.
    No POST waits past the facade's deadline, every failure is a 503 that says when to retry, and from the
    members' detection time on every POST succeeds. No instance on the other hosts turns critical meanwhile."""
    with sim.entered():
        up_for = time.monotonic() - sim.up_at
        victim = queue_owner(sim)
        through = next(host for host in APPS if host != victim)
        survivors = tuple(host for host in APPS if host != victim)
        url = sim.facade_url(through)
        run = uuid.uuid4().hex[:6]
        session = requests.Session()
        answers = [post_answer(session, url, f"before-cut-{run}-{n}", time.monotonic()) for n in range(30)]
        assert all(a.status == 201 for a in answers), [a.status for a in answers]
        try:
            with critical_instances(sim, survivors, through) as turned_critical:
                sim.hosts.cut(victim)
                cut_at = time.monotonic()
                cut_after_up = cut_at - sim.up_at
                after: list[Answer] = []
                while len(after) < 4000 and time.monotonic() - cut_at < MEMBERS_DETECT_S + 20:
                    after.append(post_answer(session, url, f"after-cut-{run}-{len(after)}", cut_at))
                # The checks run every second: two more to see one that the last POSTs upset.
                time.sleep(2.0)
        finally:
            # Whatever happened, the next tests get the hosts whole.
            sim.hosts.heal(victim)
            healed_at = time.monotonic()
            eventually(lambda: in_every_facade(sim, victim), 120, interval=0.2, what=f"{victim} back in every facade")
            expected = {s: len(APPS) for s in ("hazelcast", "logging-service", "messages-service", "facade-service")}
            sim.wait_passing(expected, 240, print)
        failed = [a for a in after if a.status != 201]
        recovered_after = max((a.started + a.seconds for a in failed), default=0.0)
        record(log_dir, "hosts-cut-posts", {
            "up_for_s_before_the_first_post": round(up_for, 1),
            "cut_after_up_s": round(cut_after_up, 1),
            "cut": victim,
            "posted_through": through,
            "posts": len(after),
            "failed": len(failed),
            "failed_s": [round(a.seconds, 2) for a in failed],
            "failed_kinds": dict(collections.Counter(str(a.status) for a in failed)),
            "slowest_s": round(max(a.seconds for a in after), 2),
            "last_failure_ended_after_s": round(recovered_after, 2),
            "turned_critical": sorted(turned_critical),
            "whole_again_after_heal_s": round(time.monotonic() - healed_at, 1),
        })  # fmt: skip
        slow = [(round(a.started, 1), round(a.seconds, 2), a.status) for a in after
                if a.seconds > DEADLINE_S + ANSWER_SLACK_S]  # fmt: skip
        assert not slow, f"POSTs that waited past the facade's deadline ({DEADLINE_S} s): {slow}"
        unclear = [(round(a.started, 1), a.status, a.retry_after, a.body) for a in failed if not a.retryable_503]
        assert not unclear, f"failures that are not a 503 with Retry-After: {unclear}"
        late = [(round(a.started, 1), a.status, a.body) for a in failed if a.started >= MEMBERS_DETECT_S]
        assert not late, f"POSTs failed {MEMBERS_DETECT_S} s or more after the cut: {late}"
        assert not turned_critical, f"instances on {survivors} turned critical during the cut: {turned_critical}"
        assert [a for a in after if a.started >= MEMBERS_DETECT_S], "no POST after the members' detection time"

        def served_by_victim() -> None:
            response = post(url, f"healed-{run}")
            assert response.status_code == 201 and host_of(response.json()["logged_by"]) == victim, response.text

        eventually(served_by_victim, 90, interval=0.2, what=f"a POST logged by {victim} after the heal")
        acked = {a.body["id"]: a.body["msg"] for a in answers + after if a.status == 201}
        lost = not_in_log(url, acked)
        missing, twice = consumed_exactly_once(sim, acked, held=APPS)
    record(log_dir, "hosts-cut-posts-consumed", {
        "acknowledged": len(acked),
        "acknowledged_not_in_log": len(lost),
        "acknowledged_not_consumed": len(missing),
        "consumed_twice": len(twice),
    })  # fmt: skip
    assert lost == [] and missing == [] and twice == [], (lost[:5], missing[:5], twice[:5])


def test_consul_denies_what_no_token_allows_and_each_service_runs_with_its_own_token(sim):
    with sim.entered():
        anonymous = sim.consul("app1", token="anonymous")
        with pytest.raises(consul.ACLPermissionDenied):
            anonymous.kv.get("config/hazelcast/members")
        assert anonymous.agent.services() == {}  # default deny: the anonymous token sees nothing
    for host in APPS:
        conf = (sim.run_dir / host / "supervisord.conf").read_text()
        for program, token in sim.tokens.programs[host].items():
            path = sim.token_path(host, program)
            assert path.read_text().strip() == token and token not in conf, (host, program)
            assert f'CONSUL_HTTP_TOKEN_FILE="{path}"' in conf, (host, program)


def test_consul_servers_serve_https_with_the_simulations_ca_and_client_agents_hold_auto_encrypt_certificates(sim):
    ca = sim.run_dir / "consul1" / "consul.d" / "consul-agent-ca.pem"
    token = sim.tokens.management
    argv = ["curl", "-s", "-m", "10", "--cacert", str(ca), "-H", f"X-Consul-Token: {token}"]
    done = sim.hosts.run("consul1", [*argv, "https://127.0.0.1:8501/v1/status/leader"])
    assert done.stdout.strip().strip('"').endswith(":8300"), done.stdout + done.stderr
    # The servers take RPC only over TLS from a certificate they signed (verify_incoming_rpc): the client
    # agents, through which every service registered, hold one by auto_encrypt.
    with sim.entered():
        agent = agent_self(sim.consul("app2"))
    assert agent["DebugConfig"]["AutoEncryptTLS"] is True
    assert agent["DebugConfig"]["VerifyOutgoing"] is True


def test_the_loopback_warning_works_with_a_service_token_under_the_documented_acls(sim):
    """The check asks the agent how many nodes it has and its own address: the documented service policy
    must allow it, or the warning is silently skipped on exactly the deployments it is for."""
    settings = Settings.from_env("logging-service", 8081, env={"SERVICE_HOST": "127.0.0.1"})
    with sim.entered():
        client = sim.consul("app1", token=sim.tokens.programs["app1"]["logging"])
        warning = loopback_warning(settings, client)
    assert warning is not None and f"{len(SERVERS) + len(APPS)}-node cluster" in warning, warning


def test_a_service_answers_on_loopback_inside_its_host_as_well_as_on_the_host_address(sim):
    argv = ["curl", "-s", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:8080/facade"]
    done = subprocess.run(["./scripts/hosts", "--run-dir", str(sim.run_dir), "run", "app1", "--", *argv],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert done.stdout == "200", done.stdout + done.stderr
    with sim.entered():
        _, entries = sim.consul("app1").health.service("facade-service")
    assert sim.addr("app1") in {e["Service"]["Address"] for e in entries}
    assert "127.0.0.1" not in {e["Service"]["Address"] for e in entries}


def test_a_new_consul_leader_is_elected_after_the_leader_dies_and_kv_survives_a_restart(sim, log_dir):
    with sim.entered():
        leader = sim.leader()
        leader_host = next(h for h in SERVERS if leader.startswith(f"{sim.addr(h)}:"))
        asked = next(h for h in SERVERS if h != leader_host)
        killed_at = time.monotonic()
        sim.hosts.kill(leader_host)

        def new_leader() -> float:
            now = sim.leader(asked)
            assert now and now != leader, f"leader {now!r}"
            return time.monotonic() - killed_at

        elected_after = eventually(new_leader, 60, interval=0.05, what="a new Consul leader")

        # Registration through one host's agent, discovery through another's, while a server is down.
        probe = f"probe-{uuid.uuid4().hex[:6]}"
        sim.consul("app1").agent.service.register(probe, service_id=probe, address=sim.addr("app1"), port=9)

        def discovered() -> None:
            _, entries = sim.consul("app2").health.service(probe)
            assert [e["Service"]["Address"] for e in entries] == [sim.addr("app1")]

        eventually(discovered, 30, interval=0.2, what="the probe found through app2's agent")
        response = post(sim.facade_url("app2"), "while-a-server-is-down")
        assert response.status_code == 201, response.text

        # The dead server back, then every server restarted at once: KV comes back from the data directories.
        sim.start_supervisor(leader_host)
        sim.start(leader_host, "consul")
        sim.wait_consul(120)
        key = f"test/hosts/{probe}"
        assert sim.consul().kv.put(key, "kept")
        for server in SERVERS:
            assert sim.supervisorctl(server, "stop", "consul").returncode == 0
        for server in SERVERS:
            sim.start(server, "consul")
        sim.wait_consul(120)

        def kept() -> None:
            _, entry = sim.consul("consul3").kv.get(key)
            assert entry is not None and entry["Value"] == b"kept", entry

        eventually(kept, 60, interval=0.5, what="the key read after every server restarted")
        sim.consul("app1").agent.service.deregister(probe)
        sim.consul().kv.delete(key)
        sim.wait_passing({s: len(APPS) for s in ("logging-service", "messages-service", "facade-service")}, 120, print)
    record(log_dir, "hosts-consul-leader", {"new_leader_after_s": round(elected_after, 2)})
    assert elected_after < 20


def acknowledged(load: Load) -> dict[str, str]:
    """id -> message of every POST the facade acknowledged (201)."""
    return {o.body["id"]: o.body["msg"] for o in load.answered(201)}


def not_in_log(url: str, acked: dict[str, str]) -> list[str]:
    log = set(read_all(url, "logging"))
    return [msg for msg in acked.values() if msg not in log]


def held_by(stack: HostStack, host: str) -> list[str]:
    """What `host`'s messages instance consumed and holds."""
    return read_all(f"{stack.url(host, 'messages')}/messages", "messages")


def taken_in_log(stack: HostStack, host: str) -> set[str]:
    """The ids `host`'s messages instances wrote they took from the queue (`took message <id>`): what a
    killed consumer took is gone with its memory, not from its log."""
    text = stack.log_path(host, "messages").read_text(errors="replace")
    return set(re.findall(r"took message ([0-9a-f-]{36}) from the queue", text))


def consumption(stack: HostStack, acked: dict[str, str], held: Iterable[str], killed: Iterable[str] = ()):
    """How often each acknowledged message was consumed: held by the messages instance of each host in
    `held`, or taken, as its log says, by one of `killed`. Returns the messages not consumed and those
    consumed more than once, each as "<msg> <id>"."""
    ids = {msg: message_id for message_id, msg in acked.items()}
    counts = collections.Counter(m for host in held for m in held_by(stack, host) if m in ids)
    for host in killed:
        counts.update(acked[i] for i in taken_in_log(stack, host) if i in acked)
    # Each with its id, which the services' logs name.
    missing = [f"{msg} {ids[msg]}" for msg in ids if msg not in counts]
    return missing, sorted(f"{msg} {ids[msg]}" for msg, n in counts.items() if n > 1)


def consumed_exactly_once(stack: HostStack, acked: dict[str, str], held, killed=(), timeout: float = 60.0):
    """The acknowledged messages not consumed and those consumed twice, once the consumers caught up (or
    after `timeout`): RELIABILITY counts a 201 as logged and queued, so each must be consumed exactly once."""

    def caught_up() -> tuple[list[str], list[str]]:
        missing, twice = consumption(stack, acked, held, killed)
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged messages not consumed yet: {missing[:5]}"
        return missing, twice

    try:
        return eventually(caught_up, timeout, interval=1.0, what="every acknowledged message consumed")
    except AssertionError:
        return consumption(stack, acked, held, killed)


def start_again(stack: HostStack, host: str) -> None:
    stack.start_supervisor(host)
    for program in ("consul", "hazelcast"):
        stack.start(host, program)
    stack.start_all([(host, program) for program in ("nginx", "logging", "messages", "facade")])


def in_every_facade(stack: HostStack, host: str, reads: int = 6) -> None:
    """Every read of every other host's facade lists both services' instances on `host`."""
    for facade in APPS:
        if facade == host:
            continue
        for _ in range(reads):
            details = requests.get(f"{stack.url(facade)}/health", timeout=5).json()["details"]["discovery"]
            for service in ("logging-service", "messages-service"):
                assert_present(host, {host_of(i) for i in details[service]["instances"]})


def out_of_every_facade(stack: HostStack, host: str, since: float) -> float:
    """Seconds from `since` until no reachable facade (every application host but `host`) routes to `host`."""
    facades = tuple(h for h in APPS if h != host)
    eventually(
        lambda: assert_absent(host, stack.routed_hosts(facades)), 60, interval=0.1, what=f"{host} out of rotation"
    )
    return time.monotonic() - since


def fault_under_load(sim, tag: str, fault, after: int, max_requests: int, max_seconds: float):
    """2 clients POST to app1's facade; after 60 answers `fault("app3")`, then `after` more answers once
    app3 is out of every other facade's rotation. Returns the finished load, the answers served before
    that point, and the seconds from the fault to out of rotation."""
    url = sim.facade_url("app1")
    run = uuid.uuid4().hex[:6]
    load = Load(lambda s, n: post(url, f"{tag}-{run}-{n}", s), clients=2, max_requests=max_requests,
                max_seconds=max_seconds)  # fmt: skip
    with load:
        load.wait_for(60, timeout=60)
        fault("app3")
        dropped_after = out_of_every_facade(sim, "app3", time.monotonic())
        served = len(load.snapshot())
        load.wait_for(served + after, timeout=after)
    return load, served, dropped_after


def test_a_host_killed_whole_loses_nothing_acknowledged(sim, log_dir):
    """Every acknowledged message in the log and consumed exactly once; app3's consumer died with what it
    held, so what it took is read from its log. The one exception is the consumer's window (RELIABILITY,
    "Consumer window"): a poll under way when the host died, whose item left the queue and whose answer died
    with app3's consumer or with the queue's owner on app3 (or a line "took message" that died in the pipe
    to app3's stopped supervisord). At most one per consumer, and only messages whose POST was sent before app3
    was dead."""
    dead_at = []

    def kill(host: str) -> None:
        sim.hosts.kill(host)
        dead_at.append(time.monotonic())

    with sim.entered():
        url = sim.facade_url("app1")
        try:
            load, _, dropped_after = fault_under_load(sim, "kill", kill, 60, 1500, 90)
            acked = acknowledged(load)
            lost = not_in_log(url, acked)
            missing, twice = consumed_exactly_once(sim, acked, held=("app1", "app2"), killed=("app3",))
        finally:
            # Whatever happened, the next tests get app3 back.
            start_again(sim, "app3")
            expected = {s: len(APPS) for s in ("hazelcast", "logging-service", "messages-service", "facade-service")}
            sim.wait_passing(expected, 240, print)
    # By when the POST was sent, not answered: the member's ack can come before its death and the facade's
    # 201 reach the client after it (on a loaded machine, seconds after).
    sent_at = {f"{o.body['msg']} {o.body['id']}": o.started for o in load.answered(201)}
    in_flight = [m for m in missing if sent_at[m] <= dead_at[0]]
    record(log_dir, "hosts-kill", {
        "acknowledged": len(acked),
        "acknowledged_lost": len(set(lost) | set(missing)),
        "acknowledged_not_in_log": len(lost),
        "acknowledged_not_consumed": len(missing),
        "taken_by_a_poll_under_way_at_the_kill": len(in_flight),
        "consumed_twice": len(twice),
        "failed": len(load.failures()),
        "out_of_every_facade_after_s": round(dropped_after, 2),
    })  # fmt: skip
    assert acked and lost == [], f"{len(lost)} of {len(acked)} acknowledged POSTs not in the log: {lost[:5]}"
    after_the_kill = sorted(set(missing) - set(in_flight))
    assert not after_the_kill, f"sent once app3 was dead, acknowledged, and never consumed: {after_the_kill}"
    assert len(in_flight) <= len(APPS), f"more than one poll per consumer under way at the kill: {in_flight}"
    assert twice == [], f"{len(twice)} of {len(acked)} acknowledged POSTs consumed twice: {twice[:5]}"


def test_a_host_cut_off_leaves_the_rotation_loses_nothing_acknowledged_and_comes_back_when_healed(sim, log_dir):
    with sim.entered():
        url = sim.facade_url("app1")
        pid_before = sim.supervisorctl("app3", "pid", "logging").stdout.strip()
        run = uuid.uuid4().hex[:6]
        # A client on app3 itself goes on posting to app3's facade (on the host's 127.0.0.1: its own address
        # went down with its link): what the cut-off side acknowledges must survive the merge too.
        inside_url = f"http://127.0.0.1:{host_config.SERVICE_PORTS['facade']}/facade"
        inside = Load(lambda s, n: post(inside_url, f"inside-{run}-{n}", s), clients=1, max_requests=300,
                      max_seconds=MEMBERS_DETECT_S + 10)  # fmt: skip

        started: list[Load] = []
        cut_at: list[float] = []

        def cut_and_post_inside(host: str) -> None:
            sim.hosts.cut(host)
            cut_at.append(time.monotonic())
            with hosts_module.entered_namespace(sim.hosts.namespace(host)):
                started.append(inside.start())  # its thread stays in app3's namespace

        try:
            load, served, dropped_after = fault_under_load(sim, "cut", cut_and_post_inside, 90, 2000, 120)
        finally:
            for running in started:
                running.finish()
        after_drop = load.snapshot()[served:]
        acked = acknowledged(load)
        lost = not_in_log(url, acked)
        failed_after_drop = [o for o in after_drop if not o.ok]
        record(log_dir, "hosts-cut", {
            "acknowledged": len(acked),
            "acknowledged_not_in_log": len(lost),
            "failed": len(load.failures()),
            "failed_after_out_of_rotation": len(failed_after_drop),
            "out_of_every_facade_after_s": round(dropped_after, 2),
            "inside_the_cut_host": dict(collections.Counter(o.kind for o in inside.snapshot())),
        })  # fmt: skip
        assert acked and lost == [], f"{len(lost)} of {len(acked)} acknowledged POSTs not in the log: {lost[:5]}"
        assert not [o for o in after_drop if o.ok and host_of(o.body["logged_by"]) == "app3"]
        # The POSTs keep succeeding through app1 and app2 once Hazelcast, too, has dropped app3's member.
        assert all(o.ok for o in after_drop[-30:]), [o.kind for o in after_drop[-30:]]

        sim.hosts.heal("app3")
        healed_at = time.monotonic()
        eventually(lambda: in_every_facade(sim, "app3"), 120, interval=0.2, what="app3 back in every facade")
        back_after = time.monotonic() - healed_at
        eventually(lambda: assert_present("app3", passing_hosts(sim, "facade-service")), 60, interval=0.2)

        def served_by_app3() -> None:
            response = post(url, f"healed-{run}")
            assert response.status_code == 201 and host_of(response.json()["logged_by"]) == "app3", response.text

        eventually(served_by_app3, 90, interval=0.2, what="a POST logged by app3 after the heal")
        served_after = time.monotonic() - healed_at
        assert sim.supervisorctl("app3", "pid", "logging").stdout.strip() == pid_before
        # app3's member merged back into the cluster: what app3 stores now, the other hosts read.
        assert f"healed-{run}" in read_all(url, "logging")
        acked |= acknowledged(inside)
        lost = not_in_log(url, acked)
        # Every messages instance holds what it consumed, app3's (cut off, not killed) too.
        missing, twice = consumed_exactly_once(sim, acked, held=APPS)
    # The consumer's window (RELIABILITY, "Consumer window"), as for a host killed: a poll of app3's consumer
    # under way at the cut took its item from the queue's owner on another host, and its answer never crossed.
    sent_at = {f"{o.body['msg']} {o.body['id']}": o.started for o in load.answered(201) + inside.answered(201)}
    in_flight = [m for m in missing if sent_at[m] <= cut_at[0]]  # by when sent, as after a kill
    record(log_dir, "hosts-heal", {
        "back_in_every_facade_after_s": round(back_after, 2),
        "first_post_logged_by_the_healed_host_after_s": round(served_after, 2),
        "acknowledged_inside_the_cut_host": len(acknowledged(inside)),
        "acknowledged_lost": len(set(lost) | set(missing)),
        "acknowledged_not_in_log_after_the_merge": len(lost),
        "acknowledged_not_consumed": len(missing),
        "taken_by_a_poll_under_way_at_the_cut": len(in_flight),
        "consumed_twice": len(twice),
    })  # fmt: skip
    assert lost == [], f"{len(lost)} acknowledged POSTs not in the log after the merge: {lost[:5]}"
    after_the_cut = sorted(set(missing) - set(in_flight))
    assert not after_the_cut, f"acknowledged once app3 was cut off, and never consumed: {after_the_cut}"
    assert len(in_flight) <= 1, f"more than the one poll of app3's consumer under way at the cut: {in_flight}"
    assert twice == [], f"{len(twice)} of {len(acked)} acknowledged POSTs consumed twice: {twice[:5]}"


# What each kind of process registers in Consul (the agent: every instance of its host).
KILLED_KINDS = {
    "hazelcast": ("hazelcast",),
    "logging": ("logging-service",),
    "messages": ("messages-service",),
    "facade": ("facade-service",),
    "consul": ("hazelcast", "logging-service", "messages-service", "facade-service"),
}
REGISTERED = "servicekit.registration: registered "


def supervised_pid(stack: HostStack, host: str, program: str) -> int:
    """The pid supervisord started `program` as (0 while it runs none). On a loaded machine supervisorctl can
    print its answer and take seconds more to exit: what it printed is used, and none is a failure to retry."""
    try:
        answer = stack.supervisorctl(host, "pid", program, timeout=30).stdout
    except subprocess.TimeoutExpired as slow:
        answer = slow.output.decode() if isinstance(slow.output, bytes) else (slow.output or "")
        if not answer.strip():
            raise AssertionError(f"supervisorctl pid {program} on {host}: no answer in 30 s") from slow
    answer = answer.strip()
    return int(answer) if answer.isdigit() else 0


def running_pid(stack: HostStack, host: str, program: str) -> int:
    """The pid of `program`, once supervisord runs it."""

    def running() -> int:
        pid = supervised_pid(stack, host, program)
        assert pid, f"{program} not running on {host}"
        return pid

    return eventually(running, 60, interval=0.2, what=f"{program} running on {host}")


def starts(stack: HostStack, host: str, program: str) -> int:
    """How many times `program` was ready, as its log says: a service registered itself with Consul, a member
    saw the cluster whole (3 members) from its side; 0 for the agent (see ready_again)."""
    mark = {"hazelcast": f"Members {{size:{len(APPS)},"}.get(
        program, REGISTERED if program in host_config.SERVICE_PORTS else ""
    )
    return stack.log_path(host, program).read_text(errors="replace").count(mark) if mark else 0


def ready_again(stack: HostStack, host: str, program: str, before: int) -> None:
    """The process started after the kill is the one serving: it logged its readiness once more (a service,
    the member), or answers with the cluster's leader (the agent)."""
    if program == "consul":
        assert stack.consul(host).status.leader(), "the agent knows no leader"
    else:
        assert starts(stack, host, program) > before, f"{program} not ready again"


def test_each_kind_of_process_killed_comes_back_by_itself_and_no_request_fails_meanwhile(sim, log_dir):
    """`kill -9` of app3's member, logging and messages instances, facade master and Consul client agent, one
    after the other, under POSTs through app1's and app2's facades: supervisord starts each again by itself
    (autorestart=unexpected), the new process is ready (a service registered itself again, the member joined
    the cluster, the agent answers), and then passes in Consul and is in every other facade's rotation. No POST
    fails: the other hosts serve meanwhile."""
    host, figures = "app3", {}
    with sim.entered():
        urls = [sim.facade_url(h) for h in APPS if h != host]
        run = uuid.uuid4().hex[:6]
        load = Load(lambda s, n: post(urls[n % len(urls)], f"back-{run}-{n}", s), clients=2, max_requests=20000,
                    max_seconds=600, pause=0.05)  # fmt: skip
        with load:
            load.wait_for(20, timeout=60)
            for kind, services in KILLED_KINDS.items():
                pid = running_pid(sim, host, kind)
                ready_before = starts(sim, host, kind)
                failed_before = len(load.failures())
                seen_down: set[str] = set()

                def look(services=services, seen_down=seen_down) -> None:
                    seen_down.update(s for s in services if host not in passing_hosts(sim, s))

                with watching(look):
                    killed_at = time.monotonic()
                    subprocess.run(["kill", "-9", str(pid)], check=True)
                    eventually(lambda pid=pid, kind=kind: _assert(supervised_pid(sim, host, kind) not in (0, pid)),
                               60, interval=0.1, what=f"{kind} started again")  # fmt: skip
                    started = time.monotonic() - killed_at
                    eventually(lambda kind=kind, n=ready_before: ready_again(sim, host, kind, n), 120, interval=0.2,
                               what=f"{kind} ready again")  # fmt: skip
                    ready = time.monotonic() - killed_at
                    for service in services:
                        eventually(lambda service=service: assert_present(host, passing_hosts(sim, service)), 120,
                                   interval=0.2, what=f"{service} of {host} passing again")  # fmt: skip
                    passing = time.monotonic() - killed_at
                    eventually(lambda: in_every_facade(sim, host), 120, interval=0.2, what=f"{host} in every rotation")
                    rotation = time.monotonic() - killed_at
                figures[kind] = {
                    "started_again_after_s": round(started, 1),
                    "ready_again_after_s": round(ready, 1),
                    "passing_again_after_s": round(passing, 1),
                    "in_every_facade_again_after_s": round(rotation, 1),
                    # Whether Consul saw the kill: a gunicorn master is often back before its next check.
                    "seen_not_passing_in_consul": sorted(seen_down),
                    "posts_failed": len(load.failures()) - failed_before,
                }
            served = len(load.snapshot())
            load.wait_for(served + 20, timeout=60)
    flat = {f"{kind}_{name}": value for kind, measured in figures.items() for name, value in measured.items()}
    record(log_dir, "hosts-killed-each-kind", {**flat, "posts": len(load.snapshot()), "failed": len(load.failures())})
    assert load.failures() == [], [(o.kind, o.body) for o in load.failures()][:10]


def _assert(condition: bool) -> None:
    assert condition


def in_maintenance(stack: HostStack) -> set[str]:
    """The instances Consul shows in maintenance mode (./scripts/drain)."""
    _, checks = stack.consul().health.state("critical")
    return {c["ServiceID"] for c in checks if c["CheckID"].startswith(maintenance.MAINTENANCE_CHECK_PREFIX)}


@contextlib.contextmanager
def watching(look, every: float = 0.1) -> Iterator[None]:
    """`look()` every `every` s on a thread of its own (Consul's or the network's hiccups skipped) while inside."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            with contextlib.suppress(consul.ConsulException, requests.RequestException):
                look()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


class FacadePicker:
    """What a load balancer in front of the facades does: send each request to a facade Consul lists as passing,
    among `hosts`' (`look` again and again, e.g. `with watching(picker.look, every=0.3)`)."""

    def __init__(self, stack: HostStack, hosts: tuple[str, ...]):
        self._stack, self._hosts = stack, hosts
        self._urls = [stack.facade_url(h) for h in hosts]

    def look(self) -> None:
        passing = passing_hosts(self._stack, "facade-service", asked="consul1")
        self._urls = [self._stack.facade_url(h) for h in self._hosts if h in passing] or self._urls

    def pick(self) -> str:
        return random.choice(self._urls)


def test_a_rolling_upgrade_under_load_fails_no_request_and_loses_nothing_acknowledged(sim, log_dir):
    """`./scripts/hosts upgrade --to HEAD` (a worktree of this commit: the services move to another checkout)
    while 4 clients POST through app1's and app2's facades, each request to one that Consul lists as passing:
    every app host drained, stopped, started on the new code, back in rotation, one after the other."""
    drained: set[str] = set()
    facades = FacadePicker(sim, ("app1", "app2"))
    with sim.entered(), watching(facades.look, every=0.3):
        run = uuid.uuid4().hex[:6]
        load = Load(lambda s, n: post(facades.pick(), f"upgrade-{run}-{n}", s), clients=4, max_requests=20000,
                    max_seconds=400, pause=0.05)  # fmt: skip
        with load, watching(lambda: drained.update(in_maintenance(sim))):
            load.wait_for(40, timeout=60)
            started = time.monotonic()
            took = sim.upgrade("HEAD", progress=print)
            upgraded_in = time.monotonic() - started
            served = len(load.snapshot())
            load.wait_for(served + 40, timeout=60)
        acked = acknowledged(load)
        lost = not_in_log(sim.facade_url("app1"), acked)
        # Every messages instance was restarted: what each took is read from its log.
        missing, twice = consumed_exactly_once(sim, acked, held=(), killed=APPS)
        release = sim.release("HEAD")
        running = {}
        for host in APPS:
            for program in host_config.SERVICE_PORTS:
                master = psutil.Process(running_pid(sim, host, program))
                # Where it runs and imports from: gunicorn puts its working directory first on sys.path.
                running[host, program] = (master.cwd(), master.environ().get("PYTHONPATH"))
    record(log_dir, "hosts-upgrade", {
        "posts": len(load.snapshot()),
        "failed": len(load.failures()),
        "acknowledged": len(acked),
        "acknowledged_lost": len(set(lost) | set(missing)),
        "consumed_twice": len(twice),
        "upgrade_s": round(upgraded_in, 1),
        **{f"{host}_s": round(seconds, 1) for host, seconds in took.items()},
    })  # fmt: skip
    assert load.failures() == [], [(o.kind, o.body) for o in load.failures()][:10]
    assert acked and lost == [] and missing == [], (lost[:5], missing[:5])
    assert twice == [], twice[:5]
    assert set(running.values()) == {(str(release), str(release))}, running
    # Each instance was drained before it stopped (its own stop leaves Consul too, so no request would fail
    # without the drain: this is what shows the upgrade took them out of rotation first).
    assert drained == {i for host in APPS for i in sim.instance_ids(host).values()}, drained
