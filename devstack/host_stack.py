"""The stack on several simulated hosts (./scripts/hosts): three Consul servers (consul1-consul3) and N
application hosts (app1...), each with a Consul client agent, a Hazelcast member and one instance of each
service, every host a network namespace of devstack.hosts, its processes run by a supervisord of its own.

    python -m devstack.host_stack up --apps 3 | status | down
    python -m devstack.host_stack run app1 -- curl -s http://127.100.0.21:8080/facade
    python -m devstack.host_stack addr app1 | cut app1 | heal app1 | kill app1
    python -m devstack.host_stack deploy-docs          # docs/DEPLOY.md from the same templates

Addresses: the servers are 127.100.0.11-13, the application hosts 127.100.0.21 on. The run directory
(HOSTS_RUN_DIR, by default run/hosts) keeps each host's configuration, Consul data and logs, the gossip key
and simulation.json, which names the namespace prefix (HOSTS_PREFIX, by default `hosts`) for later calls.

As on real machines (docs/DEPLOY.md), each host's programs run as the unprivileged users of
devstack.host_config (made here, once, on this machine), every secret is in a file of mode 0600 owned by
the user that reads it, written that way from the start (servicekit.private_files), and this tooling
talks to the agents over HTTPS with the simulation's CA: their plain HTTP port answers on loopback only.
Root is needed for the namespaces and the users, and by each host's supervisord, to start its programs
as their users.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import logging
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import consul
import requests

from devstack import deploy_doc, host_acl, host_config
from devstack.consul_agent import consul_binary
from devstack.hosts import NETWORK, Hosts
from devstack.processes import ROOT, VENV_BIN, eventually
from logging_svc.settings import default_log_capacity_bytes, java_size_bytes
from servicekit import kvconfig, stack
from servicekit.consul_client import make_consul
from servicekit.private_files import write_private
from servicekit.registration import agent_members
from servicekit.settings import ConsulAddress, ConsulSettings
from stackctl import maintenance
from stackctl.hazelcast_member import service_definitions
from stackctl.stack_status import service_health, status_table, wait_passing

log = logging.getLogger(__name__)

SERVERS = ("consul1", "consul2", "consul3")
HTTPS_PORT = 8501
SERVICES = ("logging-service", "messages-service", "facade-service")
# Members of a small heap: the machine is shared by every host of the simulation.
DEFAULT_HEAP = "256m"
MERGE_DELAY_SECONDS = 10
# How long a drained host's facade keeps serving before it stops: its clients pick facades from Consul, and a
# pick made just before the drain is sent within this.
DRAIN_GRACE_S = 2.0


def server_address(index: int) -> str:
    return f"{NETWORK}.{10 + index}"


def app_address(index: int) -> str:
    return f"{NETWORK}.{20 + index}"


class HostStack:
    def __init__(self, run_dir: Path, prefix: str = "hosts", apps: int = 3, heap: str = DEFAULT_HEAP):
        if not 1 <= apps <= 200:
            raise ValueError(f"between 1 and 200 application hosts, not {apps}")
        self.run_dir = run_dir.resolve()
        self.hosts = Hosts(prefix)
        self.apps = tuple(f"app{i}" for i in range(1, apps + 1))
        self.heap = heap
        self._tokens: host_acl.Tokens | None = None
        # time.monotonic() when up() last saw every instance passing (issue 18's cut comes within a minute).
        self.up_at = float("nan")
        for i, name in enumerate(SERVERS, 1):
            self.hosts.addresses[name] = server_address(i)
        for i, name in enumerate(self.apps, 1):
            self.hosts.addresses[name] = app_address(i)

    @classmethod
    def load(cls, run_dir: Path) -> HostStack:
        """The simulation whose state `up` wrote into `run_dir`."""
        state = json.loads((run_dir / "simulation.json").read_text())
        return cls(run_dir, state["prefix"], state["apps"], state["heap"])

    @property
    def names(self) -> tuple[str, ...]:
        return (*SERVERS, *self.apps)

    def addr(self, host: str) -> str:
        return self.hosts.addresses[host]

    def url(self, host: str, service: str = "facade") -> str:
        return f"http://{self.addr(host)}:{host_config.SERVICE_PORTS[service]}"

    def facade_url(self, host: str) -> str:
        return f"{self.url(host)}/facade"

    def layout(self, root: Path = ROOT) -> host_config.Layout:
        """Where a host's files are; `root` is the checkout its programs run (a release, after an upgrade)."""
        heap_bytes = java_size_bytes(self.heap)
        return host_config.Layout(
            root=str(root),
            venv_bin=str(VENV_BIN),
            consul_bin=consul_binary(),
            consul_dir=str(self.run_dir / "{host}" / "consul.d"),
            data_dir=str(self.run_dir / "{host}" / "data"),
            log_dir=str(self.run_dir / "{host}" / "logs"),
            run_dir=str(self.run_dir / "{host}"),
            token_dir=str(self.run_dir / "{host}" / "tokens"),
            metrics_dir=str(self.run_dir / "{host}" / "metrics"),
            extra_env={
                "HAZELCAST_HEAP": self.heap,
                # A member cut off and healed merges back within seconds, not Hazelcast's default 5 minutes.
                "HAZELCAST_MERGE_DELAY_SECONDS": str(MERGE_DELAY_SECONDS),
                # The log's capacity follows the members' heaps, as conf/stack.env's does for ./scripts/up.
                "LOG_CAPACITY_BYTES": str(default_log_capacity_bytes(heap_bytes, len(self.apps))),
                # The checkout's own packages first, whichever checkout the virtualenv was installed from.
                "PYTHONPATH": str(root),
            },
        )

    def gossip_key(self) -> str:
        """Made on the first start and kept: every agent's data directory remembers it."""
        path = self.run_dir / "gossip.key"
        if not path.exists():
            done = subprocess.run([consul_binary(), "keygen"], capture_output=True, text=True, timeout=30, check=True)
            write_private(path, done.stdout.strip() + "\n")
        return path.read_text().strip()

    @property
    def tokens(self) -> host_acl.Tokens:
        """The ACL secrets (run_dir/acl.json): chosen once, kept with the servers' data."""
        if self._tokens is None:
            self._tokens = host_acl.Tokens(self.run_dir / "acl.json", self.names, self.apps)
        return self._tokens

    def log_path(self, host: str, program: str) -> Path:
        return self.run_dir / host / "logs" / f"{program}.log"

    def token_path(self, host: str, program: str) -> Path:
        return Path(self.layout().at(host).token_file(program))

    # -- bringing it up ------------------------------------------------------------------------------------

    def write_config(self) -> None:
        key = self.gossip_key()
        servers = [self.addr(name) for name in SERVERS]
        layout = self.layout()
        consul_user = system_user(layout.consul_user)
        service_user = system_user(layout.service_user)
        for host in self.names:
            at = layout.at(host)
            app = host in self.apps
            Path(at.log_dir).mkdir(parents=True, exist_ok=True)
            # The agent's configuration and data are its user's alone; a run of an older version left them root's.
            consul_dir = owned_dir(Path(at.consul_dir), consul_user)
            owned_dir(Path(at.data_dir), consul_user, recursive=True)

            def secret(path: Path, text: str, user: pwd.struct_passwd = consul_user) -> None:
                write_private(path, text, uid=user.pw_uid, gid=user.pw_gid)

            config = host_config.consul_config(host, self.addr(host), servers, key, at.data_dir, server=not app)
            secret(consul_dir / "agent.hcl", config)
            secret(
                consul_dir / "acl.hcl", host_config.render("consul-acl.hcl.tmpl", agent_token=self.tokens.agent[host])
            )
            self._write_tls(host, consul_dir, secret)
            if app:
                path = consul_dir / "hazelcast.json"
                # As docs/DEPLOY.md says: the member's definition carries the hazelcast token, so the agent
                # may register it under default deny.
                (definition,) = service_definitions([host_config.HAZELCAST_PORT], self.addr(host), host)
                definition["token"] = self.tokens.programs[host]["hazelcast"]
                secret(path, json.dumps({"services": [definition]}, indent=1))
                owned_dir(Path(at.token_dir), service_user)
                for program in host_config.TOKEN_PROGRAMS:
                    secret(Path(at.token_file(program)), self.tokens.programs[host][program] + "\n", service_user)
                owned_dir(Path(at.metrics_dir), service_user)
                owned_dir(Path(at.nginx_dir), service_user)
                access_log = Path(at.nginx_access_log)
                access_log.touch(mode=0o640)
                os.chown(access_log, service_user.pw_uid, service_user.pw_gid)
            conf = host_config.supervisor_config(host, self.addr(host), at, app)
            (self.run_dir / host / "supervisord.conf").write_text(conf)

    @property
    def tls_dir(self) -> Path:
        return self.run_dir / "tls"

    def tls_files(self) -> dict[str, Path]:
        """The CA and the servers' certificate, made once with `consul tls` as docs/DEPLOY.md says, naming
        every server's address. `consul tls` writes its keys as the umask allows: under 077, 0600 from the
        start (with the usual 022 the CA's key was 0644)."""
        names = {
            "ca": "consul-agent-ca.pem",
            "ca-key": "consul-agent-ca-key.pem",
            "cert": host_config.SERVER_CERT,
            "key": host_config.SERVER_KEY,
        }
        files = {role: self.tls_dir / name for role, name in names.items()}
        addresses = self.tls_dir / "server-addresses"
        wanted = " ".join(self.addr(server) for server in SERVERS)
        made = addresses.read_text() if addresses.exists() else ""
        if made != wanted or not all(path.exists() for path in files.values()):
            shutil.rmtree(self.tls_dir, ignore_errors=True)
            self.tls_dir.mkdir(parents=True, mode=0o700)
            for argv in (["ca", "create"], host_config.server_cert_command(self.addr(s) for s in SERVERS)):
                subprocess.run(
                    [consul_binary(), "tls", *argv], cwd=self.tls_dir, capture_output=True, timeout=60, check=True,
                    preexec_fn=lambda: os.umask(0o077),
                )  # fmt: skip
            addresses.write_text(wanted)
        return files

    @property
    def ca_file(self) -> Path:
        """The simulation's CA certificate (`up` makes it: see tls_files)."""
        return self.tls_dir / "consul-agent-ca.pem"

    def ca_bundle(self, refresh: bool = False) -> Path:
        """The CAs the agents' HTTPS certificates come from: the simulation's, which signed the servers', and
        Consul's own Connect CA, which signs the certificates client agents get by auto_encrypt (asked of a
        server, over HTTPS checked against the first). Call it inside entered()."""
        path = self.tls_dir / "ca-bundle.pem"
        if refresh or not path.exists():
            url = f"https://{self.addr(SERVERS[0])}:{HTTPS_PORT}/v1/connect/ca/roots"
            response = requests.get(url, verify=str(self.ca_file), timeout=10)
            response.raise_for_status()
            roots = response.json()["Roots"] or []
            assert roots, "the leader has no Connect CA yet"
            pems = [self.ca_file.read_text(), *(root["RootCert"] for root in roots)]
            write_private(path, "".join(pem.strip() + "\n" for pem in pems))
        return path

    def _write_tls(self, host: str, consul_dir: Path, secret: Callable[[Path, str], None]) -> None:
        """Every agent gets the CA; a server also its certificate and key. Client agents get theirs from the
        servers (auto_encrypt)."""
        files = self.tls_files()
        server = host in SERVERS
        for role in ("ca", "cert", "key") if server else ("ca",):
            secret(consul_dir / files[role].name, files[role].read_text())
        if server:
            config = host_config.render(
                "consul-tls-server.hcl.tmpl",
                config_dir=consul_dir,
                datacenter=host_config.DATACENTER,
                address=self.addr(host),
            )
        else:
            config = host_config.render("consul-tls-client.hcl.tmpl", config_dir=consul_dir, address=self.addr(host))
        secret(consul_dir / "tls.hcl", config)

    def up(self, timeout: float = 600.0, progress: Callable[[str], None] = log.info) -> HostStack:
        """Every host made, every process started and passing in Consul; idempotent."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "simulation.json").write_text(
            json.dumps({"prefix": self.hosts.prefix, "apps": len(self.apps), "heap": self.heap})
        )
        deadline = time.monotonic() + timeout
        progress(f"making the network and {len(self.names)} hosts (namespaces {self.hosts.prefix}-*)")
        self.hosts.create()
        for host in self.names:
            self.hosts.add(host, self.addr(host))
        self.write_config()
        for host in self.names:
            self.start_supervisor(host)
        progress("starting the Consul servers")
        self.start_all([(host, "consul") for host in SERVERS])
        with self.hosts.entered():
            eventually(self._assert_leader, deadline - time.monotonic(), interval=0.5, what="a Consul leader")
            eventually(lambda: self.ca_bundle(refresh=True), 60, interval=0.5, what="Consul's Connect CA roots")
            progress("ACLs: bootstrap (once), a policy and token per agent and per service")
            self.ensure_acl(deadline - time.monotonic())
            progress("starting the client agents")
            self.start_all([(host, "consul") for host in self.apps])
            self.wait_consul(deadline - time.monotonic())
            progress(f"Consul leader {self.leader()}; seeding KV")
            self.seed_kv()
            progress("starting a Hazelcast member on each application host")
            self.start_all([(host, "hazelcast") for host in self.apps])
            self.wait_passing({kvconfig.HAZELCAST_SERVICE: len(self.apps)}, deadline - time.monotonic(), progress)
            progress("starting nginx, logging, messages and facade on each application host")
            self.start_all([(host, program) for host in self.apps for program in ("nginx", *host_config.SERVICE_PORTS)])
            expected = {service: len(self.apps) for service in SERVICES}
            self.wait_passing(expected, deadline - time.monotonic(), progress)
        self.up_at = time.monotonic()
        return self

    def supervisorctl(self, host: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(VENV_BIN / "supervisorctl"), "-c", str(self.run_dir / host / "supervisord.conf"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def supervisor_alive(self, host: str) -> bool:
        return self.supervisorctl(host, "pid", timeout=10).returncode == 0

    def start_supervisor(self, host: str) -> None:
        """One supervisord per host, inside its namespaces (it daemonizes, and stays there)."""
        if self.supervisor_alive(host):
            return
        (self.run_dir / host / "supervisord.sock").unlink(missing_ok=True)
        # The programs get their tokens from their files: none of the caller's (`sudo -E`) reaches them.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_HTTP_")}
        supervisord = [str(VENV_BIN / "supervisord"), "-c", str(self.run_dir / host / "supervisord.conf")]
        argv = ["sh", "-c", f'{reachable(self._needed_paths())} exec "$@"', "sh", *supervisord]
        done = self.hosts.run(host, argv, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"supervisord on {host} did not start: {done.stderr.strip()}")
        eventually(lambda: self._assert_supervisor(host), 30, interval=0.2, what=f"supervisord on {host}")

    def _needed_paths(self) -> list[Path]:
        """What the programs run or read: the checkout, its virtualenv and the Python under it, the tools,
        the run directory, java."""
        java = shutil.which("java")
        paths = [ROOT, VENV_BIN.parent, Path(sys.base_prefix), stack.tools_dir(), self.run_dir]
        paths += [Path(os.path.realpath(java)).parent] if java else []
        return [Path(os.path.realpath(path)) for path in paths]

    def _assert_supervisor(self, host: str) -> None:
        try:
            alive = self.supervisor_alive(host)
        except subprocess.TimeoutExpired:
            # supervisorctl slower than its 10 s on a loaded machine: asked again until the wait's deadline.
            alive = False
        assert alive, f"supervisord on {host} does not answer"

    def start_all(self, programs: list[tuple[str, str]]) -> None:
        """Start each (host, program) at once: `supervisorctl start` waits out the program's `startsecs`, which
        one after the other would add up (supervisord itself starts a host's programs in priority order)."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(programs)) as pool:
            for started in [pool.submit(self.start, host, program) for host, program in programs]:
                started.result()

    def start(self, host: str, program: str) -> None:
        done = self.supervisorctl(host, "start", program)
        if done.returncode != 0 and "ALREADY_STARTED" not in done.stdout:
            raise RuntimeError(
                f"{program} on {host} did not start: {done.stdout.strip()} (log: {self.log_path(host, program)})"
            )

    def seed_kv(self) -> None:
        values = kvconfig.seed_values()
        members = [f"{self.addr(host)}:{host_config.HAZELCAST_PORT}" for host in self.apps]
        values[kvconfig.KEY_MEMBERS] = ",".join(members)
        values[kvconfig.KEY_CLUSTER_NAME] = f"hosts-{self.hosts.prefix}"
        kvconfig.seed(self.consul(), values)

    # -- looking at it (from inside entered()) --------------------------------------------------------------

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """The calling thread on the simulated network (see devstack.hosts.Hosts.entered)."""
        with self.hosts.entered():
            yield

    def consul(self, host: str = "consul1", timeout: float = 5.0, token: str | None = None) -> consul.Consul:
        """A client of `host`'s agent over HTTPS, with the management token unless told another; call it
        inside entered()."""
        address = ConsulAddress("https", self.addr(host), HTTPS_PORT)
        ca = self.ca_file if host in SERVERS else self.ca_bundle()
        settings = ConsulSettings(address, token=token or self.tokens.management, timeout=timeout, ca_file=str(ca))
        return make_consul(settings)

    def ensure_acl(self, timeout: float) -> None:
        """Bootstrapped, every policy and token made; a new leader may still refuse for a moment."""
        base = f"https://{self.addr(SERVERS[0])}:{HTTPS_PORT}"
        eventually(
            lambda: host_acl.ensure(base, self.tokens, self.ca_file), timeout, interval=1.0, what="the ACL tokens made"
        )

    def _assert_leader(self) -> None:
        assert self.leader(), "no leader yet"

    def leader(self, host: str = "consul1") -> str:
        """The leader's RPC address (`127.100.0.12:8300`) as `host` sees it; empty while there is none."""
        return self.consul(host, timeout=2.0).status.leader()

    def wait_consul(self, timeout: float) -> None:
        def every_agent_alive() -> None:
            assert self.leader(), "no leader yet"
            members = agent_members(self.consul(timeout=2.0))
            alive = {m["Name"] for m in members if m["Status"] == 1}
            assert alive >= set(self.names), f"not alive yet: {sorted(set(self.names) - alive)}"

        eventually(every_agent_alive, timeout, interval=0.5, what="a Consul leader and every agent alive")

    def wait_passing(self, expected: dict[str, int], timeout: float, progress: Callable[[str], None]) -> None:
        if not wait_passing(self.consul(), expected, max(timeout, 1.0), progress):
            raise RuntimeError(f"not passing after {timeout:.0f} s: {expected}; logs under {self.run_dir}/<host>/logs")

    # -- a rolling upgrade ------------------------------------------------------------------------------------

    def release(self, ref: str) -> Path:
        """A checkout of `ref` for the hosts to run: a git worktree in run_dir/releases/<commit>, made once. It
        shares the virtualenv: a release that needs other packages needs ./scripts/install first."""
        commit = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=ROOT, capture_output=True,
                                text=True, timeout=30, check=True).stdout.strip()  # fmt: skip
        path = self.run_dir / "releases" / commit[:12]
        if not path.exists():
            subprocess.run(["git", "worktree", "add", "--detach", str(path), commit], cwd=ROOT, capture_output=True,
                           timeout=120, check=True)  # fmt: skip
        return path

    def instance_ids(self, host: str) -> dict[str, str]:
        """program -> the id its instance registers under (servicekit: <service>-<host>-<port>)."""
        names = host_config.SERVICE_NAMES
        return {program: f"{names[program]}-{host}-{port}" for program, port in host_config.SERVICE_PORTS.items()}

    def routed_hosts(self, facades: Iterable[str], reads: int = 6) -> set[str]:
        """The hosts whose logging or messages instances some worker of some of `facades` would call: each
        facade's /health lists its worker's instances, and each read, on a connection of its own, may reach
        another worker."""
        found = set()
        for facade in facades:
            for _ in range(reads):
                details = requests.get(f"{self.url(facade)}/health", timeout=5).json()["details"]["discovery"]
                for service in ("logging-service", "messages-service"):
                    found |= {instance.rsplit("-", 2)[-2] for instance in details[service]["instances"]}
        return found

    def upgrade(self, ref: str | None = None, progress: Callable[[str], None] = log.info) -> dict[str, float]:
        """A rolling upgrade of the services, one application host at a time: its instances drained (Consul
        maintenance), waited for until no other facade routes to them and the clients of its facade (which
        pick facades from Consul) have moved on, stopped, started again on `ref`'s code (the same code without
        it), waited for until they pass and every other facade routes to them, undrained. The members, nginx's
        configuration and the agents stay as they are. Returns the seconds each host took."""
        root = self.release(ref) if ref else None
        with self.hosts.entered():
            return {host: self._upgrade_host(host, root, ref or "the same code", progress) for host in self.apps}

    def _upgrade_host(self, host: str, root: Path | None, to: str, progress: Callable[[str], None]) -> float:
        started = time.monotonic()
        agent, everyone = self.consul(host), self.consul()
        ids = self.instance_ids(host)
        others = [h for h in self.apps if h != host]
        progress(f"{host}: draining {', '.join(ids.values())}")
        for instance in ids.values():
            maintenance.drain(agent, instance, f"rolling upgrade to {to}")

        def not_routed() -> None:
            assert_absent(host, self.routed_hosts(others))

        eventually(not_routed, 60, interval=0.2, what=f"no facade routing to {host}")
        # A client that picked this facade just before the drain has sent its request by now; the facade's
        # graceful stop answers it.
        time.sleep(DRAIN_GRACE_S)
        programs = ("facade", "logging", "messages")
        done = self.supervisorctl(host, "stop", *programs)
        if done.returncode != 0:
            raise RuntimeError(f"could not stop {programs} on {host}: {done.stdout.strip()}")
        if root is not None:
            progress(f"{host}: the services now run {root}")
            conf = host_config.supervisor_config(host, self.addr(host), self.layout(root).at(host), True)
            (self.run_dir / host / "supervisord.conf").write_text(conf)
            self.supervisorctl(host, "reread")
            self.supervisorctl(host, "update", *programs)
        self.start_all([(host, program) for program in programs])
        # A stopped instance left Consul, and its maintenance with it; one that did not (its master was killed)
        # would keep it, and never pass. Its own check still has to pass before any facade routes to it.
        for instance in ids.values():
            with contextlib.suppress(maintenance.NotHere, consul.ConsulException):
                maintenance.undrain(agent, instance)

        def passing() -> None:
            _assert_passing(everyone, ids)

        eventually(passing, 120, interval=0.2, what=f"{host}'s instances passing again")

        def routed_again() -> None:
            assert_present(host, self.routed_hosts(others))

        eventually(routed_again, 60, interval=0.2, what=f"{host} back in every other facade's rotation")
        took = time.monotonic() - started
        progress(f"{host}: upgraded in {took:.1f} s")
        return took

    # -- status and the end ----------------------------------------------------------------------------------

    def status(self) -> list[str]:
        lines = []
        known = set(self.hosts.hosts())
        for host in self.names:
            if host not in known:
                lines.append(f"{host:<8} {self.addr(host):<14} (no namespace)")
                continue
            lines.append(f"{host:<8} {self.addr(host):<14} link {self.hosts.link(host)}")
            done = self.supervisorctl(host, "status", timeout=10)
            for line in done.stdout.splitlines() or ["  (supervisord does not answer)"]:
                lines.append(f"    {line}")
        with self.hosts.entered():
            for server in SERVERS:
                try:
                    health = service_health(self.consul(server, timeout=2.0))
                except (consul.ConsulException, OSError) as exc:
                    lines.append(f"Consul at {server} does not answer: {type(exc).__name__}")
                    continue
                lines.append(f"Consul (asked {server}, leader {self.leader(server) or 'none'}):")
                lines.extend(f"  {line}" for line in status_table(health))
                break
        return lines

    def down(self) -> list[str]:
        """Every process killed and every namespace of the prefix deleted, and the releases an upgrade made
        (git worktrees); Consul data and logs are kept."""
        removed = self.hosts.down()
        for release in sorted((self.run_dir / "releases").glob("*")):
            subprocess.run(["git", "worktree", "remove", "--force", str(release)], cwd=ROOT, capture_output=True,
                           timeout=60)  # fmt: skip
        return removed


def reachable(paths: list[Path]) -> str:
    """Shell commands that let the programs' unprivileged users reach `paths` where a directory above one
    lets no other user through: a Python installed under /root (mode 0700, as pyenv installs it on this
    kind of machine). Run in the host's mount namespace (`ip netns exec` gives each command one of its
    own, a slave of the machine's, so nothing here reaches the machine): each such directory is covered
    with an empty tmpfs, and the paths under it are bound back at their own place. The programs see
    nothing else of it; the machine's directories keep their modes. Empty when every path is reachable.
    On real hosts (docs/DEPLOY.md) the checkout and its Python are where every user may read them."""
    blocked: dict[Path, list[Path]] = {}
    for path in sorted(set(paths)):
        if any(path.is_relative_to(p) for ps in blocked.values() for p in ps):
            continue
        for ancestor in (*reversed(path.parents), path):
            if not ancestor.exists():
                break
            if not os.stat(ancestor).st_mode & stat.S_IXOTH:
                if ancestor != path:
                    blocked.setdefault(ancestor, []).append(path)
                break
    steps = []
    for n, (ancestor, inside) in enumerate(blocked.items()):
        staged = [f"/tmp/.reach-{os.getpid()}-{n}-{i}" for i in range(len(inside))]
        for path, stage in zip(inside, staged, strict=True):
            steps += [f"mkdir -p {shlex.quote(stage)}", f"mount --bind {shlex.quote(str(path))} {shlex.quote(stage)}"]
        steps.append(f"mount -t tmpfs -o mode=0755,size=1m reach {shlex.quote(str(ancestor))}")
        for path, stage in zip(inside, staged, strict=True):
            steps += [
                f"mkdir -p {shlex.quote(str(path))}",
                f"mount --move {shlex.quote(stage)} {shlex.quote(str(path))}",
            ]
            steps.append(f"rmdir {shlex.quote(stage)}")
    return "".join(f"{step} && " for step in steps)


def system_user(name: str) -> pwd.struct_passwd:
    """The unprivileged user `name`, made when this machine has none (a system user without a home or a
    login shell, as a package would make it)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    done = subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", name],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    try:
        return pwd.getpwnam(name)  # also when another simulation made it meanwhile (useradd then fails)
    except KeyError:
        raise RuntimeError(f"could not make the user {name}: {done.stderr.strip()}") from None


def owned_dir(path: Path, user: pwd.struct_passwd, recursive: bool = False) -> Path:
    """`path` a directory of mode 0700 of `user`'s (and, `recursive`, everything in it)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for directory, _, names in os.walk(path) if recursive else [(str(path), [], [])]:
        for name in [directory, *(os.path.join(directory, n) for n in names)]:
            os.lchown(name, user.pw_uid, user.pw_gid)
    path.chmod(0o700)
    return path


def _failed_up(stack: HostStack, exc: BaseException, keep: bool) -> int:
    """What failed, and no half-made simulation left running unless asked (or it ran before this `up`)."""
    log.error("up failed: %s: %s", type(exc).__name__, str(exc).strip() or "(no message)")
    log.error("logs: %s/<host>/logs/", stack.run_dir)
    if keep:
        log.error("the hosts are left running; ./scripts/hosts down removes them")
    else:
        removed = stack.down()
        log.error("removed what it made (%d namespaces); --keep leaves them for a look", len(removed))
    return 1


def default_run_dir() -> Path:
    return Path(os.environ.get("HOSTS_RUN_DIR") or ROOT / "run" / "hosts")


def _stack(args: argparse.Namespace) -> HostStack:
    try:
        return HostStack.load(args.run_dir)
    except FileNotFoundError:
        raise SystemExit(f"no simulation in {args.run_dir}: run ./scripts/hosts up first") from None


def _host(stack: HostStack, host: str) -> str:
    if host not in stack.names:
        raise SystemExit(f"no host {host!r}; the hosts are {', '.join(stack.names)}")
    return host


def assert_absent(host: str, hosts: set[str]) -> None:
    assert host not in hosts, f"{host} still there: {sorted(hosts)}"


def assert_present(host: str, hosts: set[str]) -> None:
    assert host in hosts, f"{host} not there: {sorted(hosts)}"


def _assert_passing(client: consul.Consul, instances: dict[str, str]) -> None:
    """Each program's instance (program -> id) passing in Consul."""
    for program, instance in instances.items():
        _, entries = client.health.service(host_config.SERVICE_NAMES[program], passing=True)
        assert instance in {entry["Service"]["ID"] for entry in entries}, f"{instance} not passing"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="==> %(message)s")
    parser = argparse.ArgumentParser(prog="./scripts/hosts")
    parser.add_argument("--run-dir", type=Path, default=default_run_dir())
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="make the hosts and start everything, until every instance passes")
    up.add_argument("--apps", type=int, default=3)
    up.add_argument("--prefix", default=os.environ.get("HOSTS_PREFIX", "hosts"))
    up.add_argument("--keep", action="store_true", help="on a failure, leave the hosts running to look at them")
    sub.add_parser("status", help="hosts, processes and Consul health")
    sub.add_parser("down", help="kill every process and remove every namespace")
    run = sub.add_parser("run", help="run a command inside a host: run HOST -- CMD...")
    run.add_argument("host")
    run.add_argument("argv", nargs=argparse.REMAINDER)
    for name, text in (("addr", "print a host's address"), ("cut", "a host's link down"), ("heal", "a host's link up"),
                       ("kill", "kill every process of a host at once")):  # fmt: skip
        sub.add_parser(name, help=text).add_argument("host")
    upgrade = sub.add_parser("upgrade", help="restart the services host by host, drained, with no failed request")
    upgrade.add_argument("--to", metavar="REF", help="run this commit's code (a git worktree); default: the same code")
    docs = sub.add_parser("deploy-docs", help="write docs/DEPLOY.md from conf/hosts/")
    docs.add_argument("--check", action="store_true", help="fail when docs/DEPLOY.md is not up to date")
    args = parser.parse_args(argv)

    if args.command == "deploy-docs":
        return deploy_doc.main(check=args.check)
    if args.command == "up":
        if (args.run_dir / "simulation.json").exists():
            previous = HostStack.load(args.run_dir)
            if previous.hosts.exists() and (previous.hosts.prefix, len(previous.apps)) != (args.prefix, args.apps):
                raise SystemExit(f"a simulation of other hosts runs from {args.run_dir}: ./scripts/hosts down first")
        stack = HostStack(args.run_dir, args.prefix, args.apps)
        ours = not stack.hosts.exists()
        try:
            stack.up(progress=lambda line: log.info("%s", line.strip()))
        except (Exception, KeyboardInterrupt) as exc:  # whatever it was, say it and clean up (below)
            return _failed_up(stack, exc, keep=args.keep or not ours)
        sys.stdout.write("\nThe hosts are up.\n")
        for host in stack.names:
            sys.stdout.write(f"  {host:<8} {stack.addr(host)}\n")
        sys.stdout.write("Facades (reachable inside the hosts: ./scripts/hosts run HOST -- curl ...):\n")
        for host in stack.apps:
            sys.stdout.write(f"  {stack.facade_url(host)}\n")
        sys.stdout.write(f"Logs: {args.run_dir}/<host>/logs/\n")
        return 0
    if args.command == "down":
        if (args.run_dir / "simulation.json").exists():
            removed = _stack(args).down()
        else:
            removed = Hosts(os.environ.get("HOSTS_PREFIX", "hosts")).down()
        log.info("removed %s", ", ".join(removed) if removed else "nothing (no namespace left)")
        return 0
    stack = _stack(args)
    if args.command == "upgrade":
        took = stack.upgrade(args.to, progress=lambda line: log.info("%s", line))
        log.info("upgraded %s in %.0f s", ", ".join(took), sum(took.values()))
        return 0
    if args.command == "status":
        sys.stdout.write("".join(f"{line}\n" for line in stack.status()))
        return 0
    host = _host(stack, args.host)
    if args.command == "addr":
        sys.stdout.write(f"{stack.addr(host)}\n")
        return 0
    if args.command == "run":
        argv_ = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not argv_:
            raise SystemExit("run HOST -- CMD...: no command")
        return subprocess.run(stack.hosts.command(host, argv_)).returncode
    getattr(stack.hosts, args.command)(host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
