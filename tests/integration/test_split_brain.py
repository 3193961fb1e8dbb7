"""Split-brain protection (conf/hazelcast.xml): the log map and the queue take writes only while a member
sees at least 2 members, so a member cut off alone refuses writes instead of acknowledging what the merge
after the heal may drop. On loopback a member left alone looks the same as one cut off: the others are
killed. The whole system is this module's own (it kills members)."""

from __future__ import annotations

import uuid

import hazelcast
import pytest
import requests
from hazelcast.errors import SplitBrainProtectionError

from devstack import eventually, running_stack

TIMEOUT = 10
MEMBER_HEAP = "128m"


def post_log(url: str, message_id: str) -> requests.Response:
    return requests.post(f"{url}/logging", json={"id": message_id, "msg": "quorum"}, timeout=TIMEOUT)


def test_a_member_left_alone_refuses_writes_and_nothing_refused_is_acknowledged(log_dir):
    with running_stack(log_dir / "split-brain", members=3, logging=1, messages=0, facades=1, heap=MEMBER_HEAP) as stack:
        client = hazelcast.HazelcastClient(
            cluster_name=stack.cluster.cluster_name, cluster_members=stack.cluster.addresses, cluster_connect_timeout=30
        )
        try:
            log_map = client.get_map("messages-log").blocking()
            logging_url = stack.logging[0].url
            victims = list(stack.cluster.members.values())

            def members(n: int):
                def seen():
                    assert len(client.cluster_service.get_members()) == n
                    log_map.get("probe")  # the client routes to the members left

                return seen

            # One member of three gone: two still make the quorum, writes go on.
            victims[0].kill9()
            eventually(members(2), timeout=30, interval=0.2, what="2 members left")
            kept = str(uuid.uuid4())
            answer = eventually(lambda: _stored(post_log(logging_url, kept)), timeout=30, what="a write with 2 members")
            assert answer.status_code == 201, answer.text

            # Two gone: the last member alone refuses every write.
            victims[1].kill9()
            eventually(members(1), timeout=30, interval=0.2, what="1 member left")
            acknowledged: list[str] = []

            def refused():
                message_id = str(uuid.uuid4())
                answer = post_log(logging_url, message_id)
                if answer.status_code in (200, 201):
                    acknowledged.append(message_id)
                    return message_id, answer
                assert answer.status_code == 503 and answer.json().get("stored") is False, answer.text
                return message_id, answer

            message_id, answer = eventually(refused, timeout=30, interval=0.5, what="the lone member refusing a write")
            assert not acknowledged, f"acknowledged by a lone member: {acknowledged}"
            assert "too few members" in answer.json()["error"], answer.text
            # The lone member still answers reads: the refused entry is not there.
            assert log_map.get(message_id) is None
            # The queue (its name from Consul KV too, so under the `default` queue config) refuses the same way.
            with pytest.raises(SplitBrainProtectionError):
                client.get_queue("messages-queue").blocking().offer("x")
            through_facade = requests.post(stack.url, json={"msg": "quorum"}, timeout=TIMEOUT)
            assert through_facade.status_code == 503, through_facade.text
            assert through_facade.json().get("logged") is not True, through_facade.text
        finally:
            client.shutdown()


def _stored(answer: requests.Response) -> requests.Response:
    assert answer.status_code in (200, 201), answer.text
    return answer
