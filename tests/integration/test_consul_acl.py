"""CONSUL_HTTP_TOKEN against a Consul agent with ACLs on and a default-deny policy.

The services get a token with only what they need: write their own service, read the catalog (discovery,
the `hazelcast` service) and read config/ in KV. A missing or wrong token must show in the log, once and
clearly, and the process must stay up (no crash loop); no token may ever reach a log.
"""

from __future__ import annotations

import time
import uuid

import consul
import psutil
import pytest
import requests

from devstack import ConsulAgent, HazelcastCluster, Service, eventually, read_all, start_service, wait_passing
from servicekit import kvconfig
from servicekit.consul_client import make_consul
from servicekit.settings import ConsulAddress, ConsulSettings

# One worker for the module: its tests share `acl_agent`, which every worker would build again.
pytestmark = pytest.mark.xdist_group("consul_acl")

TIMEOUT = 10

# The rules in Consul's JSON form (py-consul sends `rules` JSON-encoded).
SERVICE_POLICY = {
    "service": {name: {"policy": "write"} for name in ("facade-service", "logging-service", "messages-service")},
    "service_prefix": {"": {"policy": "read"}},
    "node_prefix": {"": {"policy": "read"}},
    "key_prefix": {"config/": {"policy": "read"}},
}


class AclConsulAgent(ConsulAgent):
    """A dev agent with ACLs enabled, default deny, and a management token written into its config."""

    def __init__(self, log_dir, name: str = "consul-acl"):
        super().__init__(log_dir, name=name)
        self.master_token = str(uuid.uuid4())
        config = log_dir / f"{name}-acl.hcl"
        config.parent.mkdir(parents=True, exist_ok=True)
        # Consul 1.8 names the management token `master` (1.11 renamed it initial_management); the agent
        # uses it too, to keep its own node in the catalog.
        config.write_text(
            f"""
primary_datacenter = "dc1"
acl {{
  enabled        = true
  default_policy = "deny"
  down_policy    = "extend-cache"
  tokens {{
    master = "{self.master_token}"
    agent  = "{self.master_token}"
  }}
}}
"""
        )
        self.proc.args.append(f"-config-file={config}")

    def client(self, timeout: float = 5.0, token: str | None = None) -> consul.Consul:
        return consul.Consul(
            host="127.0.0.1", port=self.http_port, token=token or self.master_token, connections_timeout=timeout
        )


@pytest.fixture(scope="module")
def acl_agent(log_dir, hazelcast_cluster: HazelcastCluster):
    agent = AclConsulAgent(log_dir / "consul-acl").start()
    try:
        admin = agent.client()
        # The session cluster, with a queue and map of this module's own: nobody else consumes them.
        values = kvconfig.seed_values()
        values.update(
            {
                kvconfig.KEY_CLUSTER_NAME: hazelcast_cluster.cluster_name,
                kvconfig.KEY_MEMBERS: ",".join(hazelcast_cluster.addresses),
                kvconfig.KEY_QUEUE: f"acl-queue-{uuid.uuid4().hex[:8]}",
                kvconfig.KEY_MAP: f"acl-log-{uuid.uuid4().hex[:8]}",
            }
        )
        kvconfig.seed(admin, values)
        admin.acl.policy.create(name="services", rules=SERVICE_POLICY, description="what the three services need")
        agent.service_token = admin.acl.token.create(policies_name=["services"], description="services")["SecretID"]
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def services(acl_agent, log_dir):
    started: list[Service] = []

    def start(name: str, token: str | None) -> Service:
        # An empty CONSUL_HTTP_TOKEN means none, in Settings and in py-consul alike.
        service = start_service(name, acl_agent, log_dir / "consul-acl", env={"CONSUL_HTTP_TOKEN": token or ""})
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


def test_the_stack_registers_discovers_and_serves_with_a_least_privilege_token(acl_agent, services):
    token = acl_agent.service_token
    stack = [services(name, token) for name in ("logging-service", "messages-service", "facade-service")]
    for service in stack:
        wait_passing(acl_agent, service)
    facade = stack[-1]
    text = f"behind ACLs {uuid.uuid4()}"

    response = requests.post(f"{facade.url}/facade", json={"msg": text}, timeout=TIMEOUT)
    assert response.status_code == 201, response.text
    assert response.json()["logged_by"] == stack[0].instance_id

    def consumed():
        url = f"{facade.url}/facade"
        assert text in read_all(url, "logging")
        assert text in read_all(url, "messages", "messages_next", "messages_after")

    eventually(consumed)
    # The token can do what the services do, and no more.
    limited = acl_agent.client(token=token)
    with pytest.raises(consul.ACLPermissionDenied):
        limited.kv.put("config/hazelcast/members", "127.0.0.1:1")
    with pytest.raises(consul.ACLPermissionDenied):
        limited.agent.service.register("intruder", service_id="intruder-1", port=1)
    for service in stack:
        assert token not in service.proc.log_path.read_text(), f"the token is in {service.proc.log_path}"


@pytest.mark.parametrize("token", [None, "wrong"], ids=["missing", "wrong"])
def test_a_missing_or_wrong_token_is_a_clear_log_line_and_no_crash_loop(acl_agent, services, token):
    wrong = str(uuid.uuid4()) if token == "wrong" else None
    service = services("logging-service", wrong)
    master = psutil.Process(service.proc.pid)

    def gave_up_registering():
        assert service.proc.alive(), service.proc.tail()
        assert len(master.children()) == 2, "both workers booted"
        log_text = service.proc.log_path.read_text()
        assert "could not register" in log_text
        assert ("ACL not found" if wrong else "Permission denied") in log_text
        assert "cannot read the Hazelcast settings from Consul yet" in log_text

    eventually(gave_up_registering, timeout=30, interval=0.5, what="the refusal is in the log")
    workers = {child.pid for child in master.children()}
    started = time.monotonic()

    def still_up_with_the_same_workers():
        assert service.proc.alive()
        assert {child.pid for child in master.children()} == workers
        assert time.monotonic() - started > 3, "watching for a restart"

    eventually(still_up_with_the_same_workers, timeout=10, interval=0.5)
    health = requests.get(f"{service.url}/health", timeout=TIMEOUT)
    assert health.status_code == 503 and health.json()["checks"] == {"hazelcast": False}
    _, registered = acl_agent.client().health.service("logging-service")
    assert service.instance_id not in {entry["Service"]["ID"] for entry in registered}
    log_text = service.proc.log_path.read_text()
    assert "Traceback" not in log_text
    if wrong:
        assert wrong not in log_text


def test_an_explicit_token_wins_over_consul_http_token_in_the_environment(acl_agent, monkeypatch):
    """`sudo -E ./scripts/hosts ...` keeps the caller's CONSUL_HTTP_TOKEN: a client made for the management
    token must still send the management token (py-consul alone prefers the environment's)."""
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", acl_agent.service_token)
    address = ConsulAddress("http", "127.0.0.1", acl_agent.http_port)
    admin = make_consul(ConsulSettings(address, token=acl_agent.master_token, timeout=TIMEOUT))
    key = f"test/explicit-token/{uuid.uuid4().hex[:8]}"
    assert admin.kv.put(key, "written with the management token")  # the service token may not write here
    admin.kv.delete(key)
    # And a client made without a token sends none, whatever the environment holds.
    anonymous = make_consul(ConsulSettings(address, token=None, timeout=TIMEOUT))
    with pytest.raises(consul.ACLPermissionDenied):
        anonymous.kv.get("config/hazelcast/members")
