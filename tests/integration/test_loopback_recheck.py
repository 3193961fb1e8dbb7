"""The loopback warning follows the agent's cluster after the boot: an instance whose agent was alone when it
registered, and whose agent then joined another, says so in /health from every worker (the workers forked
long before the master found it). See tests/integration/test_loopback_warning.py for the check itself."""

from __future__ import annotations

import requests

from devstack import ConsulAgent, eventually, wait_passing

# The keeper asks again every servicekit.registration.ADDRESS_RECHECK_SECONDS (10 s).

WARNING = "registered at 127.0.0.2 with an agent in a 2-node cluster: facades on other hosts call their own port"


def warnings_seen(url: str, reads: int = 8) -> list[list[str]]:
    """What several reads say, each on a connection of its own, so that both workers answer some."""
    return [requests.get(f"{url}/health", timeout=10).json().get("warnings", []) for _ in range(reads)]


def test_an_agent_that_joins_a_cluster_after_the_boot_brings_the_warning_to_every_worker(
    hazelcast_cluster, start_instance, log_dir
):
    alone, other = ConsulAgent(log_dir, name="consul-alone"), ConsulAgent(log_dir, name="consul-later")
    try:
        alone.start()
        hazelcast_cluster.seed_kv(alone)
        service = wait_passing(alone, start_instance("logging-service", agent=alone, env={"SERVICE_HOST": "127.0.0.2"}))
        url = f"http://127.0.0.2:{service.port}"
        assert warnings_seen(url) == [[]] * 8

        other.start()
        alone.client().agent.join(f"127.0.0.1:{other.ports['serf-lan']}")

        def every_read_warns() -> None:
            seen = warnings_seen(url)
            assert seen == [[WARNING]] * 8, seen

        eventually(every_read_warns, timeout=45, interval=1.0, what="the warning")
        assert WARNING in service.proc.log_path.read_text()
    finally:
        alone.stop()
        other.stop()
