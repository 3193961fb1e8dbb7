"""HAZELCAST_PARTITION_GROUPS=host (conf/hazelcast.xml's partition-group, HOST_AWARE): members on one address
are one group, and a backup never sits in its primary's group, so losing a host loses no data.

On the simulated hosts each member has its own address. Here every member is on 127.0.0.1, one host, which
Hazelcast splits into two groups to keep a backup (BackupSafeMemberGroupFactory): with three members, one
alone and two together. Each group then owns half the partitions, so the member alone owns about half of
them where three members without groups own a third each: the sign, cheap to see from a client, that the
setting reached the members and took effect."""

from __future__ import annotations

import collections

import hazelcast

from devstack import ConsulAgent, HazelcastCluster, eventually


def primaries_per_member(client: hazelcast.HazelcastClient) -> list[int]:
    # Creating the map's proxy is a write to split-brain protection: wait for the cluster to form first.
    assert len(client.cluster_service.get_members()) == 3
    # Hazelcast assigns partitions on the first partition operation.
    client.get_map("partition-group-probe").blocking().get("probe")
    partitions = client.partition_service
    owners = collections.Counter(partitions.get_partition_owner(p) for p in range(partitions.get_partition_count()))
    assert None not in owners and len(owners) == 3, f"partitions not spread over 3 members yet: {owners}"
    return sorted(owners.values())


def test_host_aware_groups_reach_the_members(log_dir, monkeypatch):
    logs = log_dir / "partition-groups"
    monkeypatch.setenv("HAZELCAST_PARTITION_GROUPS", "host")
    agent = ConsulAgent(logs).start()
    cluster = HazelcastCluster(agent, logs, size=3, heap="128m")
    client = None
    try:
        cluster.start()
        client = hazelcast.HazelcastClient(
            cluster_name=cluster.cluster_name, cluster_members=cluster.addresses, cluster_connect_timeout=30
        )
        counts = eventually(lambda: primaries_per_member(client), timeout=60, interval=0.5, what="3 owners")
        total = sum(counts)
        # Without groups: about a third each (90, 90, 91 of 271).
        assert counts[-1] >= 0.45 * total, f"primaries per member {counts}: no group of one member"
    finally:
        if client is not None:
            client.shutdown()
        cluster.stop()
        agent.stop()
