"""The bookkeeping of the run's one Hazelcast cluster (devstack/shared_cluster.py): who starts it, who joins it,
who stops it. The cluster is a fake here (pure logic); every integration run uses the real one."""

from __future__ import annotations

import subprocess
import sys

import pytest

from devstack import shared_cluster as shared


class FakeCluster:
    started: list[FakeCluster] = []
    # The last argument of the fake members' command line: stop_left_over stops only what looks like java.
    looks_like = "java"

    def __init__(self, agent, run_dir):
        self.agent, self.cluster_name, self.stopped = agent, f"fake-{len(FakeCluster.started)}", False
        self.members: dict[int, subprocess.Popen] = {}

    def start(self):
        # Real processes for pids: the bookkeeping checks that members are alive.
        sleep = [sys.executable, "-c", "import time; time.sleep(60)", FakeCluster.looks_like]
        self.members = {port: subprocess.Popen(sleep) for port in (1, 2)}
        FakeCluster.started.append(self)
        return self

    def stop(self):
        self.stopped = True
        for proc in self.members.values():
            proc.kill()
            proc.wait()

    @classmethod
    def joined(cls, agent, run_dir, cluster_name, members, names):
        cluster = cls.__new__(cls)
        cluster.agent, cluster.cluster_name, cluster.stopped, cluster.names = agent, cluster_name, False, names
        cluster.members = {}
        cluster.joined_members = members
        return cluster


@pytest.fixture(autouse=True)
def fake(monkeypatch):
    FakeCluster.started = []
    monkeypatch.setattr(shared, "HazelcastCluster", FakeCluster)
    yield
    for cluster in FakeCluster.started:
        cluster.stop()


def test_the_first_worker_starts_the_others_join_and_the_last_to_leave_stops_it(tmp_path):
    with shared.shared_cluster("agent-gw0", tmp_path, "gw0") as first:
        with shared.shared_cluster("agent-gw1", tmp_path, "gw1") as second:
            assert FakeCluster.started == [first]
            assert second.cluster_name == first.cluster_name and second.names == "gw1"
            assert set(second.joined_members) == {1, 2}
        # A worker that joins after another left joins the same cluster.
        with shared.shared_cluster("agent-gw2", tmp_path, "gw2") as third:
            assert third.cluster_name == first.cluster_name
        assert not (first.stopped or second.stopped or third.stopped), "stopped while gw0 still used it"
        assert all(proc.poll() is None for proc in first.members.values())
    assert first.stopped and FakeCluster.started == [first]
    assert not (tmp_path / shared.STATE).exists()


def test_the_starter_leaving_first_leaves_the_members_to_the_last_one(tmp_path):
    first_context = shared.shared_cluster("agent-gw0", tmp_path, "gw0")
    first = first_context.__enter__()
    with shared.shared_cluster("agent-gw1", tmp_path, "gw1") as second:
        first_context.__exit__(None, None, None)
        assert not first.stopped
        assert all(proc.poll() is None for proc in first.members.values())
    assert second.stopped, "the last worker to leave stops the cluster it joined"


def test_a_run_whose_member_died_fails_instead_of_starting_a_second_cluster(tmp_path):
    with shared.shared_cluster("agent-gw0", tmp_path, "gw0") as first:
        first.members[1].kill()
        first.members[1].wait()
        with pytest.raises(RuntimeError, match="died"), shared.shared_cluster("agent-gw1", tmp_path, "gw1"):
            pass
        assert FakeCluster.started == [first]


@pytest.mark.parametrize("looks_like", ["java", "python"])
def test_what_a_dead_worker_left_running_is_stopped_by_the_controller(tmp_path, looks_like):
    FakeCluster.looks_like = looks_like
    try:
        context = shared.shared_cluster("agent-gw0", tmp_path, "gw0")
        cluster = context.__enter__()  # never left: the worker died
        shared.stop_left_over(tmp_path)
        assert not (tmp_path / shared.STATE).exists()
        # A pid may have been reused since: only what looks like a member is stopped.
        stopped = [proc.poll() is not None for proc in cluster.members.values()]
        assert stopped == [looks_like == "java"] * 2
        context.__exit__(None, None, None)  # the generator's own cleanup, rather than at interpreter exit
    finally:
        FakeCluster.looks_like = "java"
