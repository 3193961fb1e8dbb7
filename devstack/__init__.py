"""The dev stack: real Consul, Hazelcast and gunicorn processes on free loopback ports, for the tests,
./scripts/bench, ./scripts/soak and the figure scripts.

- `devstack.processes`: a child process with its own log and process group, `eventually`.
- `devstack.ports`: free ports outside the ephemeral range, reserved across processes (xdist workers, runs).
- `devstack.consul_agent`: a Consul dev agent with every port its own, the agent's counters.
- `devstack.hazelcast_cluster`: Hazelcast members configured from Consul KV, as ./scripts/up does.
- `devstack.stack`: service instances under gunicorn, a whole stack built at once and stopped at once.
- `devstack.load`: bounded concurrent or paced load on loopback, with every outcome kept.
- `devstack.pages`: a paged GET read to its end.
- `devstack.clients`: a POST retried the way docs/API.md asks clients to, under one Idempotency-Key.
- `devstack.figures`: measured figures kept beside the logs and written into the docs.
- `devstack.order_margin`: how far two hosts' clocks may drift before the log swaps sequential POSTs.
- `devstack.hosts`: simulated hosts, one network namespace each on a bridge (127.100.0.0/24).
- `devstack.host_stack`: ./scripts/hosts, the stack on those hosts (Consul servers, an agent, a member and
  the services per application host); `devstack.host_config` renders each host's files from conf/hosts/,
  and `devstack.deploy_doc` docs/DEPLOY.md from the same templates.

Every process writes its own log file, so a failure shows why; every wait has a deadline.
"""

from devstack.clients import post_acknowledged
from devstack.consul_agent import ConsulAgent, agent_port_flags, check_status, consul_binary, prometheus_counter
from devstack.figures import record, replace_block
from devstack.hazelcast_cluster import HazelcastCluster
from devstack.load import Load, Outcome, passing_to_first_request
from devstack.pages import read_all
from devstack.ports import free_port
from devstack.processes import ROOT, VENV_BIN, Proc, eventually, until
from devstack.stack import (
    SERVICES,
    Service,
    Stack,
    build_stack,
    isolated_agent,
    metrics_url,
    running_stack,
    start_service,
    wait_passing,
)

__all__ = [
    "post_acknowledged",
    "ROOT",
    "SERVICES",
    "VENV_BIN",
    "ConsulAgent",
    "HazelcastCluster",
    "Load",
    "Outcome",
    "Proc",
    "Service",
    "Stack",
    "agent_port_flags",
    "build_stack",
    "check_status",
    "consul_binary",
    "eventually",
    "free_port",
    "isolated_agent",
    "metrics_url",
    "passing_to_first_request",
    "prometheus_counter",
    "read_all",
    "record",
    "replace_block",
    "running_stack",
    "start_service",
    "until",
    "wait_passing",
]
