"""The operator scripts themselves: ./scripts/up, ./scripts/down and ./scripts/install, run for real.

Every stack here has its own run and log directories (STACK_RUN_DIR, STACK_LOG_DIR) and its own ports
(STACK_PORT_OFFSET, chosen so that devstack.ports reserves every one of them, as it does the other tests'
free ports): a default stack of ./scripts/up, or another run of the tests, runs undisturbed beside them.
Whatever a test leaves running is found by the socket supervisord wrote into its programs' environment
and killed.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import consul
import psutil
import pytest
import requests

from devstack import ROOT, Load, consul_binary, eventually, post_acknowledged, read_all, record
from devstack.ports import reserve_all
from logging_svc.store import entry_cost
from servicekit import stack
from servicekit.settings import app_port, default_metrics_port
from stackctl import hazelcast_member, postgres, stack_status
from stackctl.stack_status import PortUse, port_is_free

SCRIPTS = ROOT / "scripts"
# conf/stack.env's counts: every port a default-sized stack binds is reserved, whatever size a test runs.
PROGRAM_PORTS = {program: stack.ports(program, env={}) for program in ("HAZELCAST", "LOGGING", "MESSAGES", "FACADE")}
CONSUL_PORTS = [stack.port(f"CONSUL_{name}_PORT") for name in ("HTTP", "SERVER", "SERF_LAN", "SERF_WAN", "GRPC", "DNS")]
METRICS_PORTS = [
    default_metrics_port(port) for program in ("LOGGING", "MESSAGES", "FACADE") for port in PROGRAM_PORTS[program]
]
# Where each facade's gunicorn listens, behind its nginx (which has the facade's port).
APP_PORTS = [app_port(port, {}) for port in PROGRAM_PORTS["FACADE"]]
DEFAULT_PORTS = (
    [port for ports in PROGRAM_PORTS.values() for port in ports]
    + METRICS_PORTS
    + APP_PORTS
    + CONSUL_PORTS
    + [stack.port("POSTGRES_PORT")]
)


def free_offset() -> int:
    """An offset that puts every port of the stack on a port between 12701 and 32085 that devstack.ports
    reserves for this process (free for TCP and UDP, outside the ephemeral range, no other run's)."""
    for _ in range(200):
        offset = random.randrange(7000, 23000)
        if reserve_all(p + offset for p in DEFAULT_PORTS):
            return offset
    raise RuntimeError("no free port offset found")


@dataclass
class StackDirs:
    """The environment of one stack of ./scripts/up: its own directories and ports."""

    tmp: Path
    offset: int
    token: str = "token-a"
    # Instance counts of a shrunk stack (scripts/lib.sh), e.g. {"LOGGING_INSTANCES": "1"}; conf/stack.env's otherwise.
    counts: dict[str, str] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.tmp / "run"

    @property
    def log_dir(self) -> Path:
        return self.tmp / "logs"

    @property
    def consul_port(self) -> int:
        return self.port(stack.port("CONSUL_HTTP_PORT"))

    def port(self, default: int) -> int:
        return default + self.offset

    def ports(self, program: str) -> list[int]:
        """The default ports of the instances of `program` this stack runs (port() moves each)."""
        return stack.ports(program, env=self.counts)

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CONSUL_", "STACK_", "SUPERVISOR_")) and not k.endswith("_INSTANCES")
        }
        return {
            **env,
            "STACK_RUN_DIR": str(self.run_dir),
            "STACK_LOG_DIR": str(self.log_dir),
            "STACK_PORT_OFFSET": str(self.offset),
            # A scheme, and a port other than 8500: both must reach the agent ./scripts/up starts.
            "CONSUL_HTTP_ADDR": f"http://127.0.0.1:{self.consul_port}",
            "CONSUL_HTTP_TOKEN": self.token,
            # Beside the other workers' stacks, a member or an instance may take minutes to start.
            "STACK_UP_TIMEOUT": "400",
            **self.counts,
            **extra,
        }

    def run(self, script: str, timeout: float = 240, **extra: str) -> subprocess.CompletedProcess:
        return self.run_args([script], timeout, **extra)

    def run_args(self, args: list[str], timeout: float = 240, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(SCRIPTS / args[0]), *args[1:]],
            cwd=ROOT,
            env=self.env(**extra),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def processes(self) -> list[psutil.Process]:
        return stack_status.stack_processes(self.run_dir)

    def supervisord(self) -> int | None:
        return stack_status.live_supervisord(self.run_dir)

    def kill_everything(self) -> None:
        """The last resort of a fixture: whatever this stack still runs dies, supervisord first."""
        pid = self.supervisord()
        if pid:
            os.kill(pid, signal.SIGKILL)
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                proc.kill()


def output(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def reachable_dir(prefix: str) -> Path:
    """A directory for a stack under the checkout: the postgres user, which runs the stack's database, must
    reach its run directory, and pytest's /tmp directories are 0700."""
    logs = ROOT / "tests" / ".logs"
    logs.mkdir(exist_ok=True)  # a fresh clone has none until a test of the run writes its first log
    home = Path(tempfile.mkdtemp(prefix=prefix, dir=logs))
    home.chmod(0o755)
    return home


@pytest.fixture
def stack_dirs():
    dirs = StackDirs(reachable_dir("stack-"), free_offset())
    yield dirs
    try:
        if dirs.supervisord() or dirs.processes():
            dirs.run("down", timeout=120)
    finally:
        dirs.kill_everything()


@pytest.mark.parametrize(
    ("counts", "refusal"),
    [
        ({"HAZELCAST_INSTANCES": "1"}, "HAZELCAST_INSTANCES must be a whole number from 2 to 3"),
        ({"FACADE_INSTANCES": "0"}, "FACADE_INSTANCES must be a whole number from 1 to 1"),
        ({"LOGGING_INSTANCES": "4"}, "LOGGING_INSTANCES must be a whole number from 1 to 3"),
        ({"MESSAGES_INSTANCES": "two"}, "MESSAGES_INSTANCES must be a whole number from 1 to 2"),
    ],
)
def test_up_refuses_instance_counts_it_cannot_run_before_it_starts_anything(tmp_path, counts, refusal):
    """A stack may be shrunk, not grown (its ports are laid out for conf/stack.env's counts), and keeps two
    members, which the split-brain protection needs to take a write."""
    dirs = StackDirs(tmp_path, free_offset(), counts=counts)
    try:
        result = dirs.run("up", timeout=60)
        assert result.returncode != 0 and refusal in result.stderr, output(result)
        assert not dirs.run_dir.exists() and dirs.processes() == [], output(result)
    finally:
        dirs.kill_everything()  # a stack that was not refused


def test_up_names_a_taken_port_and_its_holder_within_seconds(stack_dirs, log_dir):
    port = stack_dirs.port(stack_dirs.ports("LOGGING")[1])
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); "
            "print('ready', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        started = time.monotonic()
        result = stack_dirs.run("up", timeout=90)
        elapsed = time.monotonic() - started
        record(log_dir, "up_reports_a_taken_port", {"seconds": round(elapsed, 2)})
        assert result.returncode != 0, output(result)
        assert f"port {port} (logging-{port}) is taken by pid {holder.pid} ({sys.executable} -c" in result.stderr, (
            output(result)
        )
        assert "STACK_PORT_OFFSET" in result.stderr, output(result)
        assert elapsed < 30, f"{elapsed:.1f} s to report a taken port\n{output(result)}"
        # Nothing was started: no supervisord, no program, the agent's port still free.
        assert stack_dirs.supervisord() is None
        assert stack_dirs.processes() == []
        assert port_is_free(PortUse("consul", stack_dirs.consul_port))
    finally:
        holder.kill()
        holder.wait(10)


# --- One stack, brought up by ./scripts/up, shared by the tests below; each starts with `up`, which
# --- returns as soon as everything passes, so each test stands on its own.


# The tests of script_stack in one worker, one after the other: in several, each would start a stack of its own.
SHARES_THE_SCRIPT_STACK = pytest.mark.xdist_group("script_stack")
# The tests that kill supervisord start the stack from nothing, each of them: a group of their own, which
# another worker runs beside the first (each worker builds its own stack, on ports of its own).
SHARES_A_KILLED_SCRIPT_STACK = pytest.mark.xdist_group("script_stack_killed")


# The smallest stack ./scripts/up runs (scripts/lib.sh), about half the processes of a default one: the point
# of these tests is not the stack's size (supervisord's, the database's, the scripts'), and the suite runs
# four of them beside each other's and every other test's. tests/unit/test_stack_config.py checks the
# default layout.
SMALL = {"HAZELCAST_INSTANCES": "2", "LOGGING_INSTANCES": "1", "MESSAGES_INSTANCES": "1", "FACADE_INSTANCES": "1"}


@pytest.fixture(scope="module")
def script_stack_dirs():
    dirs = StackDirs(reachable_dir("script-stack-"), free_offset(), counts=SMALL)
    yield dirs
    stop(dirs)


@pytest.fixture
def script_stack(script_stack_dirs, request):
    yield script_stack_dirs
    if failed(request):  # the next test starts from nothing, not from what this one left half done
        stop(script_stack_dirs)


def failed(request: pytest.FixtureRequest) -> bool:
    """Whether the test failed or never ran to its end (tests/conftest.py keeps the report)."""
    report = getattr(request.node, "rep_call", None)
    return report is None or report.failed


def stop(dirs: StackDirs) -> None:
    try:
        print(output(dirs.run("down", timeout=150)))
    finally:
        dirs.kill_everything()


def up(stack: StackDirs, timeout: float = 720, restore: str | None = None) -> subprocess.CompletedProcess:
    result = stack.run_args(["up", *(["--restore", restore] if restore else [])], timeout)
    assert result.returncode == 0, f"{output(result)}\nlogs in {stack.log_dir}"
    return result


def supervisorctl(dirs: StackDirs, *args: str) -> subprocess.CompletedProcess:
    """supervisorctl on the stack's supervisord, with the environment its configuration reads (scripts/lib.sh)."""
    return subprocess.run(
        ["bash", "-c", 'source "$0"; ctl "$@"', str(SCRIPTS / "lib.sh"), *args],
        env=dirs.env(), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def program_pids(stack: StackDirs) -> dict[str, int]:
    """program name -> the pid supervisord started (not the gunicorn workers)."""
    pids = {}
    for proc in stack.processes():
        try:
            (_, name), parent = stack_status.supervisor_names(proc), proc.ppid()
        except psutil.Error:
            continue
        if parent not in {p.pid for p in stack.processes()}:
            pids[name] = proc.pid
    return pids


def programs(dirs: StackDirs) -> set[str]:
    """Every process supervisord runs: the agent, the database, and one a member or instance named by its port,
    and each facade's nginx, named by the facade's port."""
    return (
        {"consul", "postgres"}
        | {f"{program.lower()}-{dirs.port(port)}" for program in PROGRAM_PORTS for port in dirs.ports(program)}
        | {f"nginx-{dirs.port(port)}" for port in dirs.ports("FACADE")}
    )


@SHARES_THE_SCRIPT_STACK
@pytest.mark.timeout(1500)
def test_up_starts_the_agent_on_the_port_of_a_consul_addr_with_a_scheme(script_stack):
    result = up(script_stack)
    assert f"http://127.0.0.1:{script_stack.consul_port}/ui/" in result.stdout
    leader = requests.get(f"http://127.0.0.1:{script_stack.consul_port}/v1/status/leader", timeout=5)
    assert leader.json(), leader.text
    assert set(program_pids(script_stack)) == programs(script_stack)
    status = script_stack.run("status", timeout=30)
    assert status.returncode == 0, output(status)
    instances = sum(len(script_stack.ports(program)) for program in PROGRAM_PORTS)
    assert status.stdout.count("passing") == instances + 1, status.stdout  # the members, instances and postgres
    facade = f"http://127.0.0.1:{script_stack.port(stack.port('FACADE_PORT'))}/facade"
    posted = requests.post(facade, json={"msg": "through up"}, timeout=10)
    assert posted.status_code == 201, posted.text


@SHARES_THE_SCRIPT_STACK
@pytest.mark.timeout(1500)
def test_up_puts_an_unprivileged_nginx_in_front_of_the_facade_with_its_files_in_the_run_directory(script_stack):
    up(script_stack)
    port = script_stack.port(stack.port("FACADE_PORT"))
    pids = program_pids(script_stack)
    nginx, gunicorn = psutil.Process(pids[f"nginx-{port}"]), psutil.Process(pids[f"facade-{port}"])
    assert nginx.name() == "nginx" and nginx.uids().real == os.getuid()
    home = script_stack.run_dir / f"nginx-{port}"
    assert (home / "nginx.pid").read_text().strip() == str(nginx.pid)
    assert f"-c {home / 'nginx.conf'}" in " ".join(nginx.cmdline())

    def listening(proc: psutil.Process) -> set[tuple[str, int]]:
        procs = [proc, *proc.children()]
        return {
            (c.laddr.ip, c.laddr.port)
            for p in procs
            for c in p.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN
        }

    assert listening(nginx) == {("127.0.0.1", port)}
    assert ("127.0.0.1", port + APP_PORTS[0] - stack.port("FACADE_PORT")) in listening(gunicorn)
    assert ("127.0.0.1", port) not in listening(gunicorn)
    # Consul knows the facade by nginx's port: its check of /health goes through the front door.
    agent = consul.Consul(port=script_stack.consul_port, token=script_stack.token)
    (registered,) = agent.health.service("facade-service", passing=True)[1]
    assert registered["Service"]["Port"] == port
    answer = requests.get(f"http://127.0.0.1:{port}/facade", timeout=10)
    assert answer.status_code == 200 and answer.headers["X-Request-ID"]


@SHARES_THE_SCRIPT_STACK
@pytest.mark.timeout(1500)
def test_a_later_up_with_a_new_token_restarts_the_services_with_it(script_stack):
    up(script_stack)
    before = program_pids(script_stack)
    # The stack keeps token-b for the tests after this one: restarting the services back to token-a would
    # cost them a restart that tests nothing.
    script_stack.token = "token-b"
    result = up(script_stack)
    after = program_pids(script_stack)
    everything = programs(script_stack)
    services = {name for name in everything if not name.startswith(("consul", "hazelcast", "postgres", "nginx"))}
    for name in services:
        assert after[name] != before[name], f"{name} was not restarted\n{output(result)}"
        env = psutil.Process(after[name]).environ()
        assert env.get("CONSUL_HTTP_TOKEN") == "token-b", f"{name} runs with another token"
    # The members, the database and the agent do not use the token after they started, and nginx never
    # does: they keep running.
    assert {n: after[n] for n in everything - services} == {n: before[n] for n in everything - services}
    # The token is not in supervisord's own environment: programs.env is its one source.
    assert "CONSUL_HTTP_TOKEN" not in psutil.Process(script_stack.supervisord()).environ()


@SHARES_THE_SCRIPT_STACK
@pytest.mark.timeout(1500)
def test_up_on_other_ports_or_counts_than_the_running_stack_refuses_and_changes_nothing(script_stack):
    up(script_stack)
    before = program_pids(script_stack)
    for other in ({"CONSUL_HTTP_ADDR": f"127.0.0.1:{script_stack.consul_port + 1}"}, {"HAZELCAST_INSTANCES": "3"}):
        result = script_stack.run("up", timeout=60, **other)
        assert result.returncode == 1, output(result)
        assert "runs on other ports or other instance counts" in result.stderr, output(result)
        assert "./scripts/down first" in result.stderr, output(result)
        assert program_pids(script_stack) == before


@SHARES_THE_SCRIPT_STACK
@pytest.mark.timeout(1500)
def test_a_killed_instance_is_started_again_by_supervisord_and_passes_in_consul_again(script_stack):
    """autorestart=unexpected (scripts/supervisord.conf): `kill -9` of a logging master, and supervisord
    starts it again by itself; it registers again and passes, with nothing else restarted."""
    up(script_stack)
    port = script_stack.port(script_stack.ports("LOGGING")[0])
    name = f"logging-{port}"
    before = program_pids(script_stack)
    log = script_stack.log_dir / f"{name}.log"
    registered = log.read_text().count("registered logging-service-")
    os.kill(before[name], signal.SIGKILL)

    def started_again() -> int:
        pid = program_pids(script_stack).get(name)
        assert pid and pid != before[name], pid
        return pid

    eventually(started_again, 60, interval=0.2, what=f"{name} started again")
    agent = consul.Consul(port=script_stack.consul_port, token=script_stack.token)

    def passing_again() -> None:
        _, entries = agent.health.service("logging-service", passing=True)
        assert port in [e["Service"]["Port"] for e in entries], entries

    eventually(passing_again, 60, interval=0.5, what=f"{name} passing in Consul again")
    after = program_pids(script_stack)
    assert {n: p for n, p in after.items() if n != name} == {n: p for n, p in before.items() if n != name}
    eventually(lambda: _assert(log.read_text().count("registered logging-service-") > registered), 30,
               what=f"{name} registered again")  # fmt: skip


@SHARES_THE_SCRIPT_STACK
@pytest.mark.timeout(1500)
def test_a_restarted_agent_knows_the_hazelcast_members_again_without_up(script_stack):
    """The members are service definitions the agent loads at start: a dev agent forgets what was
    registered through its API, not what its configuration holds."""
    up(script_stack)
    restart = supervisorctl(script_stack, "restart", "consul")
    assert restart.returncode == 0, output(restart)
    client = consul.Consul(host="127.0.0.1", port=script_stack.consul_port, token="", connections_timeout=5)
    ports = [script_stack.port(p) for p in script_stack.ports("HAZELCAST")]

    def members_passing() -> None:
        _, entries = client.health.service("hazelcast", passing=True)
        assert sorted(e["Service"]["Port"] for e in entries) == ports, entries
        assert sorted(e["Service"]["ID"] for e in entries) == [f"hazelcast-{socket.gethostname()}-{p}" for p in ports]

    eventually(members_passing, 30, interval=0.5, what="the Hazelcast members passing in the restarted agent")


@SHARES_A_KILLED_SCRIPT_STACK
@pytest.mark.timeout(1500)
def test_up_after_supervisord_was_killed_stops_its_orphans_instead_of_adopting_them(script_stack):
    up(script_stack)
    before = program_pids(script_stack)
    os.kill(script_stack.supervisord(), signal.SIGKILL)
    eventually(lambda: _assert(script_stack.supervisord() is None), 10, what="supervisord gone")
    result = up(script_stack)
    assert "no longer looks after" in result.stderr, output(result)
    for name, pid in before.items():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, (
            f"{name} (pid {pid}) was adopted\n{output(result)}"
        )
    supervisor = script_stack.supervisord()
    assert supervisor is not None
    after = program_pids(script_stack)
    assert set(after) == programs(script_stack)
    assert all(psutil.Process(pid).ppid() == supervisor for pid in after.values())


@SHARES_A_KILLED_SCRIPT_STACK
@pytest.mark.timeout(1500)
def test_down_after_supervisord_was_killed_stops_every_program_it_had_started(script_stack):
    up(script_stack)
    before = program_pids(script_stack)
    os.kill(script_stack.supervisord(), signal.SIGKILL)
    eventually(lambda: _assert(script_stack.supervisord() is None), 10, what="supervisord gone")
    result = script_stack.run("down", timeout=150)
    assert result.returncode == 0, output(result)
    assert "nothing is running" not in result.stdout, output(result)
    assert script_stack.processes() == [], output(result)
    for name, pid in before.items():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, name
    assert port_is_free(PortUse("consul", script_stack.consul_port))
    again = script_stack.run("down", timeout=60)
    assert "nothing is running" in again.stdout, output(again)


def _assert(condition: bool) -> None:
    assert condition


# --- ./scripts/install, one function at a time (the script only defines them when sourced), with its
# --- tools directory in a temporary place (STACK_TOOLS_DIR): the repository's .tools/ is never touched.


def install_function(
    function: str, tools: Path, path: str | None = None, timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "STACK_TOOLS_DIR": str(tools), "TEST_PATH": path or os.environ["PATH"], **(env or {})}
    return subprocess.run(
        # PATH changes after the source: lib.sh itself needs coreutils.
        ["/bin/bash", "-c", f'source "{SCRIPTS}/install" && PATH=$TEST_PATH && {function}'],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def fake_bin(tmp_path: Path, **scripts: str) -> Path:
    """A PATH directory holding only these shell scripts: no java, no mvn, and apt-get only if given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def test_install_prints_the_apt_command_for_java_and_maven_when_there_is_no_apt_get(tmp_path):
    bin_dir = fake_bin(tmp_path, id="echo 0")
    result = install_function("install_java", tmp_path / "tools", path=str(bin_dir))
    assert result.returncode == 1, output(result)
    assert (
        "no java mvn on PATH; install them with: sudo apt-get install -y openjdk-17-jdk-headless maven" in result.stderr
    ), output(result)


def test_install_prints_the_apt_command_for_java_and_maven_when_not_root(tmp_path):
    calls = tmp_path / "apt-calls"
    bin_dir = fake_bin(tmp_path, id="echo 1000", **{"apt-get": f'echo "$*" >> {calls}'})
    result = install_function("install_java", tmp_path / "tools", path=str(bin_dir))
    assert result.returncode == 1, output(result)
    assert "sudo apt-get install -y openjdk-17-jdk-headless maven" in result.stderr, output(result)
    assert not calls.exists()


def test_install_installs_java_and_maven_with_apt_get_as_root(tmp_path):
    calls = tmp_path / "apt-calls"
    bin_dir = fake_bin(tmp_path, id="echo 0", **{"apt-get": f'echo "$*" >> {calls}'})
    result = install_function("install_java", tmp_path / "tools", path=str(bin_dir))
    assert result.returncode == 0, output(result)
    assert calls.read_text().splitlines() == ["install -y -q openjdk-17-jdk-headless maven"]


def test_install_installs_nginx_with_apt_get_as_root_when_there_is_none(tmp_path):
    calls, nginx = tmp_path / "apt-calls", tmp_path / "sbin" / "nginx"
    nginx.parent.mkdir()
    # The fake apt-get records its arguments and leaves an nginx where Debian's package puts it.
    bin_dir = fake_bin(
        tmp_path, id="echo 0", **{"apt-get": f'echo "$*" >> {calls}; echo : > {nginx}; /bin/chmod +x {nginx}'}
    )
    result = install_function("install_nginx", tmp_path / "tools", path=str(bin_dir), env={"NGINX_BIN": str(nginx)})
    assert result.returncode == 0, output(result)
    assert calls.read_text().splitlines() == ["install -y -q nginx"]


def test_install_prints_the_apt_command_for_nginx_when_not_root(tmp_path):
    calls = tmp_path / "apt-calls"
    bin_dir = fake_bin(tmp_path, id="echo 1000", **{"apt-get": f'echo "$*" >> {calls}'})
    result = install_function(
        "install_nginx", tmp_path / "tools", path=str(bin_dir), env={"NGINX_BIN": str(tmp_path / "none" / "nginx")}
    )
    assert result.returncode == 1, output(result)
    assert "sudo apt-get install -y nginx" in result.stderr, output(result)
    assert not calls.exists()


def test_install_leaves_an_installed_nginx_alone(tmp_path):
    calls = tmp_path / "apt-calls"
    bin_dir = fake_bin(tmp_path, id="echo 0", nginx="exit 0", **{"apt-get": f'echo "$*" >> {calls}'})
    result = install_function("install_nginx", tmp_path / "tools", path=str(bin_dir))
    assert result.returncode == 0, output(result)
    assert not calls.exists()


def apt_installing_promtool(tmp_path: Path, uid: str = "0", enabled: bool = True) -> tuple[Path, Path]:
    """A PATH whose apt-get installs a promtool and whose systemctl says the package's server is enabled; both
    record their calls: (the bin directory, the record)."""
    calls = tmp_path / "calls"
    record = f'echo "${{0##*/}} $*" >> {calls}'
    installed = 'echo : > "${0%/*}/promtool" && /bin/chmod +x "${0%/*}/promtool"'
    is_enabled = "exit 0" if enabled else "exit 1"
    systemctl = f'case "$1" in is-enabled) {is_enabled};; *) {record};; esac'
    bin_dir = fake_bin(tmp_path, id=f"echo {uid}", systemctl=systemctl, **{"apt-get": f"{record}; {installed}"})
    return bin_dir, calls


def test_install_installs_promtool_without_the_recommended_daemons_and_stops_the_server_it_brings(tmp_path):
    bin_dir, calls = apt_installing_promtool(tmp_path)
    result = install_function("install_promtool", tmp_path / "tools", path=str(bin_dir))
    assert result.returncode == 0, output(result)
    assert calls.read_text().splitlines() == [
        "apt-get install -y -q --no-install-recommends prometheus",
        "systemctl disable --now prometheus",
    ]


def test_install_prints_the_apt_command_for_promtool_when_not_root(tmp_path):
    bin_dir, calls = apt_installing_promtool(tmp_path, uid="1000")
    result = install_function("install_promtool", tmp_path / "tools", path=str(bin_dir))
    assert result.returncode == 1, output(result)
    assert "no promtool on PATH; install them with: sudo apt-get install -y --no-install-recommends prometheus" in (
        result.stderr
    ), output(result)
    assert not calls.exists()


def test_install_leaves_a_promtool_on_path_alone(tmp_path):
    bin_dir, calls = apt_installing_promtool(tmp_path)
    (bin_dir / "promtool").write_text("#!/bin/sh\n")
    (bin_dir / "promtool").chmod(0o755)
    result = install_function("install_promtool", tmp_path / "tools", path=str(bin_dir))
    assert result.returncode == 0, output(result)
    assert not calls.exists()


def test_install_fetches_a_truncated_hazelcast_jar_again(tmp_path):
    real = hazelcast_member.DEFAULT_JAR
    jar = tmp_path / "tools" / "hazelcast" / real.name
    jar.parent.mkdir(parents=True)
    jar.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    result = install_function("install_hazelcast", tmp_path / "tools")
    assert result.returncode == 0, output(result)
    assert "incomplete" in result.stdout, output(result)
    assert jar.stat().st_size == real.stat().st_size
    with zipfile.ZipFile(jar) as z:
        assert z.testzip() is None


def test_install_fetches_a_half_unpacked_consul_again(tmp_path):
    real = Path(consul_binary())
    broken = tmp_path / "tools" / "consul" / "usr" / "bin" / "consul"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(real.read_bytes()[:1_000_000])
    broken.chmod(0o755)
    # No consul on PATH, so the unpacked one is the one install checks.
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d) / "consul").exists())
    result = install_function("install_consul", tmp_path / "tools", path=path, timeout=300)
    assert result.returncode == 0, output(result)
    assert "does not run" in result.stdout, output(result)
    version = subprocess.run([broken, "version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.startswith("Consul v"), version
    assert sorted(p.name for p in (tmp_path / "tools").iterdir()) == ["consul"]


def test_programs_run_with_the_env_file_of_the_latest_up_even_without_a_token(tmp_path):
    """supervisord's own environment keeps the token it started with; a later `up` without one must
    leave the programs it starts without one."""
    env_file = tmp_path / "programs.env"
    writer = {**os.environ, "CONSUL_HTTP_ADDR": "http://127.0.0.1:9500"}
    writer.pop("CONSUL_HTTP_TOKEN", None)
    subprocess.run(
        [sys.executable, "-m", "stackctl", "write-env", str(env_file)], cwd=ROOT, env=writer, check=True, timeout=30
    )
    assert env_file.stat().st_mode & 0o077 == 0, "the env file may hold a token: this user only"
    program = subprocess.run(
        [sys.executable, "-m", "stackctl", "--env-file", str(env_file), "exec", "env"],
        cwd=ROOT,
        env={**os.environ, "CONSUL_HTTP_TOKEN": "old-token", "CONSUL_HTTP_ADDR": "127.0.0.1:8500"},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    lines = program.stdout.splitlines()
    assert "CONSUL_HTTP_ADDR=http://127.0.0.1:9500" in lines
    assert not any(line.startswith("CONSUL_HTTP_TOKEN=") for line in lines)


# The log through ./scripts/down, ./scripts/up and a power cut: what the store (hazelcast-store/) is for.
# Each fails with HAZELCAST_STORE=off (the members in memory only, as before it) at its first assertion.


# The durable log's tests, on a script stack too, in two groups of their own: each test stops and starts the
# stack again, so two workers run them side by side, each on its own stack (in one worker, with -n below 5 or
# -n 0, the groups take turns on that worker's one stack: each test starts with `up`).
SHARES_THE_DURABLE_STACK = pytest.mark.xdist_group("durable_stack")
SHARES_A_PURGED_DURABLE_STACK = pytest.mark.xdist_group("durable_stack_purged")


def database(dirs: StackDirs) -> postgres.Cluster:
    return postgres.Cluster(dirs.run_dir / "postgres", dirs.port(stack.port("POSTGRES_PORT")))


def facade_url(dirs: StackDirs) -> str:
    return f"http://127.0.0.1:{dirs.port(stack.port('FACADE_PORT'))}/facade"


def stored_size(dirs: StackDirs) -> int:
    """What the log's capacity counts for every entry in the database (logging_svc.store.entry_cost)."""
    lines = database(dirs).psql("SELECT id, entry FROM log_entries", user="messages").splitlines()
    return sum(entry_cost(*line.split("|", 1)) for line in lines if line)


def assert_counted(dirs: StackDirs, expected: int) -> None:
    """Every logging instance's worker counts the log's size as `expected` (/health, log.bytes)."""
    for port in dirs.ports("LOGGING"):
        for _ in range(4):  # a request reaches one worker; a few reach each of them
            health = requests.get(f"http://127.0.0.1:{dirs.port(port)}/health", timeout=5).json()
            assert health["status"] == "passing", health
            assert health["details"]["log"]["bytes"] == expected, (port, health["details"]["log"], expected)


def size_rebuilt(dirs: StackDirs, what: str) -> None:
    """Every logging worker counts what the database holds (after a start, once its size is rebuilt)."""
    eventually(lambda: assert_counted(dirs, stored_size(dirs)), 60, interval=0.5, what=what)


@SHARES_THE_DURABLE_STACK
@pytest.mark.timeout(1500)
def test_down_then_up_keeps_every_acknowledged_message_in_order_and_the_size_the_capacity_counts(script_stack):
    up(script_stack)
    run = uuid.uuid4().hex[:8]
    for n in range(150):
        answer = post_acknowledged(facade_url(script_stack), f"kept-{run}-{n}")
        assert answer.status_code == 201, answer.text
    before = eventually(lambda: read_all(facade_url(script_stack), "logging"), 120, what="the log read before down")
    assert [m for m in before if m.startswith(f"kept-{run}-")] == [f"kept-{run}-{n}" for n in range(150)]
    result = script_stack.run("down", timeout=150)
    assert result.returncode == 0, output(result)
    up(script_stack)
    after = eventually(lambda: read_all(facade_url(script_stack), "logging"), 120, what="the log read after up")
    assert after == before, f"{len(after)} messages after down and up, {len(before)} before"
    size_rebuilt(script_stack, "the log's size rebuilt from the store")


@SHARES_THE_DURABLE_STACK
@pytest.mark.timeout(1500)
def test_a_power_cut_loses_no_acknowledged_message(script_stack):
    """Every process of the stack, supervisord and PostgreSQL included, killed at once with SIGKILL."""
    up(script_stack)
    run = uuid.uuid4().hex[:8]
    url = facade_url(script_stack)
    with Load(lambda s, n: s.post(url, json={"msg": f"cut-{run}-{n}"}, timeout=15), clients=4, max_requests=2000,
              max_seconds=60, pause=0.01) as load:  # fmt: skip
        load.wait_for(100, timeout=60, ok=True)
        victims = [psutil.Process(pid) for pid in [script_stack.supervisord()] if pid] + script_stack.processes()
        for proc in victims:
            with contextlib.suppress(psutil.Error):
                proc.kill()
    acknowledged = [o.body["msg"] for o in load.snapshot() if o.status == 201]
    assert len(acknowledged) >= 100
    eventually(lambda: _assert(script_stack.processes() == []), 15, what="every process of the stack gone")
    up(script_stack)
    after = eventually(lambda: read_all(url, "logging"), 120, what="the log read after up")
    lost = set(acknowledged) - set(after)
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged messages lost: {sorted(lost)[:5]}"
    mine = [m for m in after if m.startswith(f"cut-{run}-")]
    assert len(mine) == len(set(mine)), "a message logged twice"


# Before the test that stops the stack with a failed up: it leaves a stack that must start from nothing.
@SHARES_A_PURGED_DURABLE_STACK
@pytest.mark.timeout(1500)
def test_down_purge_removes_the_log_and_up_starts_an_empty_one(script_stack):
    up(script_stack)
    assert post_acknowledged(facade_url(script_stack), "to be purged").status_code == 201
    result = script_stack.run_args(["down", "--purge"], timeout=150)
    assert result.returncode == 0, output(result)
    assert not (script_stack.run_dir / "postgres").exists()
    up(script_stack)
    assert read_all(facade_url(script_stack), "logging") == []


def consumed(dirs: StackDirs) -> list[str]:
    """What every messages instance holds."""
    return [
        m
        for port in dirs.ports("MESSAGES")
        for m in read_all(f"http://127.0.0.1:{dirs.port(port)}/messages", "messages")
    ]


@SHARES_A_PURGED_DURABLE_STACK
@pytest.mark.timeout(1500)
def test_a_backup_restored_into_an_empty_stack_holds_every_message_acknowledged_before_it(script_stack, tmp_path):
    """./scripts/backup while the stack runs, ./scripts/down --purge, ./scripts/up --restore: the log in order and
    the queue's items not consumed yet, as they were when the backup began; nothing from after it."""
    up(script_stack)
    url, run = facade_url(script_stack), uuid.uuid4().hex[:8]
    for n in range(20):
        assert post_acknowledged(url, f"logged-{run}-{n}").status_code == 201
    # Queued and not consumed when the backup is taken: the consumers are stopped.
    messages = [f"services:messages-{script_stack.port(port)}" for port in script_stack.ports("MESSAGES")]
    assert supervisorctl(script_stack, "stop", *messages).returncode == 0
    for n in range(10):
        assert post_acknowledged(url, f"queued-{run}-{n}").status_code == 201
    # Through a logging instance: the facade's GET answers 503 without a messages instance.
    logging_url = f"http://127.0.0.1:{script_stack.port(script_stack.ports('LOGGING')[0])}/logging"
    log_before = read_all(logging_url, "messages")
    backup = tmp_path / "log.dump"
    backup.write_text("an older file, readable by all")
    backup.chmod(0o644)
    result = script_stack.run_args(["backup", str(backup)], timeout=600)
    assert result.returncode == 0, output(result)
    assert backup.stat().st_mode & 0o777 == 0o600
    assert post_acknowledged(url, f"after-{run}").status_code == 201

    refused = script_stack.run_args(["up", "--restore", str(backup)], timeout=300)
    assert refused.returncode != 0 and "./scripts/down --purge first" in refused.stderr, output(refused)
    assert read_all(logging_url, "messages") == [*log_before, f"after-{run}"], "a refused restore changed the log"

    result = script_stack.run_args(["down", "--purge"], timeout=150)
    assert result.returncode == 0, output(result)
    up(script_stack, restore=str(backup))
    assert read_all(url, "logging") == log_before
    queued = {f"queued-{run}-{n}" for n in range(10)}
    eventually(lambda: _assert(queued <= set(consumed(script_stack))), 60, what="the restored queue consumed")
    assert post_acknowledged(url, f"served-{run}").status_code == 201
    size_rebuilt(script_stack, "the log's size rebuilt from the restored store")


@SHARES_A_PURGED_DURABLE_STACK
@pytest.mark.timeout(1500)
def test_up_stops_before_any_member_on_a_database_migrated_by_newer_code(script_stack):
    up(script_stack)
    newer = postgres.known_version() + 1
    database(script_stack).psql(f"INSERT INTO schema_version (version, name) VALUES ({newer}, 'from newer code')",
                                 user="messages")  # fmt: skip
    try:
        assert script_stack.run("down", timeout=150).returncode == 0
        result = script_stack.run("up", timeout=720)
        assert result.returncode != 0, output(result)
        assert f"schema version {newer}, newer than this checkout's" in result.stderr, output(result)
        assert not [p for p in program_pids(script_stack) if p.startswith("hazelcast-")], output(result)
    finally:
        database(script_stack).psql(f"DELETE FROM schema_version WHERE version = {newer}", user="messages")
