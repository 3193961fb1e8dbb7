"""How far apart two hosts' clocks may be before the log puts a client's sequential POSTs out of order.

The log's order is each logging worker's wall clock (contracts.log_entry.StampClock). A client that sends
POST B only after POST A was acknowledged expects A before B; B's stamp is taken after A's by at least A's
own way from its stamp to its answer, plus the client's turn-around, plus B's way through the facade to a
logging worker. A clock offset between A's and B's hosts below that gap cannot swap them. This measures the
gap on a stack of its own (3 members, 3 logging instances, 1 facade): sequential POSTs through the facade,
then the stamps of their entries read back from the map.

Run: .venv/bin/python -m devstack.order_margin [--posts N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import tempfile
from pathlib import Path

import hazelcast
import requests

from contracts.log_entry import stamp_of
from devstack.stack import running_stack
from servicekit import kvconfig

log = logging.getLogger(__name__)
# A stack of its own that just passed: its members answer at once, or something is wrong; never retry forever.
CONNECT_TIMEOUT_SECONDS = 30.0


def measure(posts: int, log_dir: Path) -> dict[str, float]:
    with running_stack(log_dir, members=3, logging=3, messages=0, facades=1, heap="256m") as stack:
        ids = []
        with requests.Session() as http:
            for n in range(posts):
                answer = http.post(stack.url, json={"msg": f"order-{n}"}, timeout=10)
                answer.raise_for_status()
                ids.append(answer.json()["id"])
        config = kvconfig.load(stack.agent.client())
        client = hazelcast.HazelcastClient(
            cluster_name=stack.cluster.cluster_name,
            cluster_members=stack.cluster.addresses,
            cluster_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        )
        try:
            entries = client.get_map(config.map_name).blocking().get_all(ids)
        finally:
            client.shutdown()
    stamps = [stamp_of(entries[i]) for i in ids]
    gaps_ms = sorted((b - a) / 1e6 for a, b in itertools.pairwise(stamps))
    return {
        "posts": posts,
        "min_gap_ms": round(gaps_ms[0], 3),
        "p1_gap_ms": round(gaps_ms[len(gaps_ms) // 100], 3),
        "median_gap_ms": round(statistics.median(gaps_ms), 3),
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="order-margin-") as tmp:
        log.info("%s", json.dumps(measure(min(max(args.posts, 2), 5000), Path(tmp))))


if __name__ == "__main__":
    main()
