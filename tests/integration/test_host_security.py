"""Least privilege on the simulated hosts (devstack.host_stack), as docs/DEPLOY.md tells an operator to set
it up: each program runs as its unprivileged user without capabilities, every file that holds a secret is
0600 and its reader's, the tooling talks to Consul over HTTPS only, and the instances keep their metrics in
the host's run directory and serve them on the port of their Consul meta.

A simulation of its own (two application hosts), with a namespace prefix of its own, so it runs beside
`./scripts/hosts up`; it needs root, and fails without it.
"""

from __future__ import annotations

import os
import pwd
import re
import stat
import subprocess
import uuid
from pathlib import Path

import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from devstack import ROOT, host_config
from devstack import hosts as hosts_module
from devstack.host_stack import HTTPS_PORT, SERVERS, HostStack
from servicekit.metrics_files import metrics_url
from servicekit.settings import app_port, instance_id

# One simulation for the module, in one worker: xdist spreads ungrouped tests over its workers, and each
# worker would build a simulation of its own.
pytestmark = pytest.mark.xdist_group("host_security")

APPS = ("app1", "app2")
PROGRAMS = ("consul", "hazelcast", "logging", "messages", "facade", "nginx")
TIMEOUT = 10


@pytest.fixture(scope="module")
def sim(log_dir):
    prefix = f"hs{uuid.uuid4().hex[:6]}"
    stack = HostStack(log_dir / f"hosts-{prefix}", prefix, apps=len(APPS))
    try:
        stack.up(timeout=480)
        yield stack
    finally:
        stack.down()
        assert not hosts_module.owned(prefix, hosts_module.namespaces())


def uid(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def program_pid(stack: HostStack, host: str, program: str) -> int:
    done = stack.supervisorctl(host, "pid", program, timeout=10)
    pid = int(done.stdout.strip() or 0)
    assert pid > 0, f"{program} on {host} runs no process: {done.stdout}"
    return pid


def capabilities(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {k: int(v, 16) for k, v in (line.split(":\t") for line in status.splitlines() if line.startswith("Cap"))}


def test_every_program_runs_as_its_unprivileged_user_without_capabilities_and_only_supervisord_as_root(sim):
    expected = {"consul": uid(host_config.CONSUL_USER), **{p: uid(host_config.SERVICE_USER) for p in PROGRAMS[1:]}}
    assert 0 not in expected.values()
    for host in sim.names:
        supervisord = psutil.Process(int(sim.supervisorctl(host, "pid", timeout=10).stdout.strip()))
        assert supervisord.uids().effective == 0
        for program in PROGRAMS if host in APPS else ("consul",):
            main = psutil.Process(program_pid(sim, host, program))
            for proc in [main, *main.children(recursive=True)]:
                uids = proc.uids()
                assert (uids.real, uids.effective, uids.saved) == (expected[program],) * 3, (host, program, proc)
                caps = capabilities(proc.pid)
                assert caps["CapEff"] == caps["CapPrm"] == 0, (host, program, proc, caps)
                # Its token comes from its file, not from its environment.
                assert "CONSUL_HTTP_TOKEN" not in proc.environ(), (host, program, proc)


def listeners(stack: HostStack, host: str) -> dict[str, set[str]]:
    """Inside `host`'s namespace: the program name ss gives each listening TCP socket -> its addresses."""
    done = subprocess.run(
        ["./scripts/hosts", "--run-dir", str(stack.run_dir), "run", host, "--", "ss", "-Hltnp"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    found: dict[str, set[str]] = {}
    for line in done.stdout.splitlines():
        fields = line.split()
        for name in set(re.findall(r'\("([^"]+)",pid=', line)):
            found.setdefault(name, set()).add(fields[3])
    return found


def test_the_facades_nginx_listens_on_its_host_and_passes_to_a_gunicorn_on_loopback_only(sim):
    facade, app = host_config.SERVICE_PORTS["facade"], app_port(host_config.SERVICE_PORTS["facade"], {})
    for host in APPS:
        found = listeners(sim, host)
        assert found["nginx"] == {f"{sim.addr(host)}:{facade}", f"127.0.0.1:{facade}"}, found
        gunicorn = {a for name, addresses in found.items() if name.startswith("gunicorn") for a in addresses}
        assert f"127.0.0.1:{app}" in gunicorn and not any(a.endswith(f":{facade}") for a in gunicorn), found
        # Its pid file and buffers in the host's run directory, the service user's; none in /var/lib/nginx or /run.
        home = Path(sim.layout().at(host).nginx_dir)
        assert (home / "nginx.pid").read_text().strip() == str(program_pid(sim, host, "nginx"))
        assert home.stat().st_uid == uid(host_config.SERVICE_USER)


def secrets(stack: HostStack) -> set[str]:
    tokens = stack.tokens
    found = {tokens.management, *tokens.agent.values(), stack.gossip_key()}
    found |= {token for programs in tokens.programs.values() for token in programs.values()}
    tls = stack.tls_files()
    found |= {_pem_body(tls["ca-key"]), _pem_body(tls["key"])}
    assert None not in found and all(found)
    return found  # type: ignore[return-value]


def _pem_body(path: Path) -> str:
    return "".join(line for line in path.read_text().splitlines() if not line.startswith("-----"))[:40]


def owner_of(stack: HostStack, path: Path) -> str:
    """Whose a file of the run directory must be: each host's agent's configuration and data are the
    agent's user's, its tokens the services' user's; what only the tooling reads (acl.json, gossip.key, the
    CA) is root's."""
    parts = path.relative_to(stack.run_dir).parts
    if len(parts) > 2 and parts[0] in stack.names:
        return {"consul.d": host_config.CONSUL_USER, "data": host_config.CONSUL_USER}.get(
            parts[1], host_config.SERVICE_USER if parts[1] == "tokens" else "root"
        )
    return "root"


def test_every_file_that_holds_a_secret_is_0600_and_owned_by_the_user_that_reads_it(sim):
    known = secrets(sim)
    holding = {}
    for directory, _, names in os.walk(sim.run_dir):
        for name in names:
            path = Path(directory, name)
            if path.is_symlink() or not path.is_file():
                continue
            text = path.read_bytes().decode("utf-8", errors="replace").replace("\n", "")
            if any(secret in text for secret in known):
                holding[path] = os.lstat(path)
    layout = sim.layout()
    # Those the operator's document lists, and what the tooling keeps, are among them.
    listed = {Path(p): user for host in sim.names for p, user in
              host_config.secret_files(layout.at(host), app=host in APPS).items()}  # fmt: skip
    listed |= {sim.run_dir / "acl.json": "root", sim.run_dir / "gossip.key": "root"}
    listed |= {sim.tls_files()["ca-key"]: "root", sim.tls_files()["key"]: "root"}
    assert set(listed) <= set(holding), sorted(map(str, set(listed) - set(holding)))
    wrong = {}
    for path, st in holding.items():
        owner = listed.get(path, owner_of(sim, path))
        if stat.S_IMODE(st.st_mode) & 0o077 or st.st_uid != uid(owner):
            wrong[str(path)] = (f"{stat.S_IMODE(st.st_mode):04o}", pwd.getpwuid(st.st_uid).pw_name, f"want {owner}")
    assert not wrong, wrong
    for host in sim.names:
        conf = sim.run_dir / host / "supervisord.conf"
        assert conf not in holding, f"a secret in {conf}"
        assert not any(path.is_relative_to(sim.run_dir / host / "logs") for path in holding), "a secret in a log"


def test_the_tooling_reaches_every_agent_over_https_only_and_plain_http_answers_on_loopback(sim):
    with sim.entered():
        # The servers' certificate from the simulation's CA, the client agents' from Consul's (auto_encrypt).
        ca = str(sim.ca_bundle())
        for host in sim.names:
            address = sim.addr(host)
            answer = requests.get(f"https://{address}:{HTTPS_PORT}/v1/status/leader", verify=ca, timeout=TIMEOUT)
            assert answer.status_code == 200 and answer.json().endswith(":8300"), (host, answer.text)
            with pytest.raises(requests.ConnectionError):
                requests.get(f"http://{address}:8500/v1/status/leader", timeout=TIMEOUT)
            client = sim.consul(host)
            assert client.http.base_uri == f"https://{address}:{HTTPS_PORT}" and client.http.verify in (
                ca,
                str(sim.ca_file),
            )
            assert client.status.leader()
    # Each host's own programs still have plain HTTP on loopback (the services' CONSUL_HTTP_ADDR).
    for host in (SERVERS[0], *APPS):
        done = sim.hosts.run(host, ["curl", "-s", "-m", "10", "http://127.0.0.1:8500/v1/status/leader"])
        assert done.stdout.strip().strip('"').endswith(":8300"), (host, done.stdout, done.stderr)


def test_each_instance_keeps_its_metrics_in_its_hosts_run_directory_and_serves_them_on_the_port_in_its_meta(sim):
    service_uid = uid(host_config.SERVICE_USER)
    for host in APPS:
        base = sim.run_dir / host / "metrics"
        for service, port in host_config.SERVICE_PORTS.items():
            name = {"logging": "logging-service", "messages": "messages-service", "facade": "facade-service"}[service]
            path = base / instance_id(name, port, host)
            for directory in (base, path):
                st = os.lstat(directory)
                assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700, (directory, oct(st.st_mode))
                assert st.st_uid == service_uid, (directory, st.st_uid)
    with sim.entered():
        for name in ("logging-service", "messages-service", "facade-service"):
            _, entries = sim.consul().health.service(name, passing=True)
            assert {entry["Node"]["Node"] for entry in entries} == set(APPS), entries
            for entry in entries:
                url = metrics_url(entry["Service"], entry["Node"]["Address"])
                assert url is not None and f":{entry['Service']['Port']}/" not in url, url
                scraped = requests.get(url, timeout=TIMEOUT)
                assert scraped.status_code == 200, (url, scraped.text[:200])
                families = {family.name for family in text_string_to_metric_families(scraped.text)}
                assert "http_requests" in families, (url, sorted(families))
                public = requests.get(f"http://{entry['Service']['Address']}:{entry['Service']['Port']}/metrics",
                                      timeout=TIMEOUT)  # fmt: skip
                assert public.status_code == 404, public.text[:200]
