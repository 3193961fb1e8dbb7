"""What the facade's nginx costs: POST /facade through the front door and straight to the facade's gunicorn
behind it, on one stack, in interleaved rounds (the same members, instances and noise for both).

    ./scripts/bench front-door [--rounds 3] [--seconds 10] [--connections 8]

Starts a Consul agent, three Hazelcast members and the services on free loopback ports (devstack, as the
tests do), then runs wrk against http://127.0.0.1:PORT/facade (nginx) and http://127.0.0.1:APP_PORT/facade
(gunicorn) in turn, the order drawn each round. Prints each run, then the medians and the cost: requests per
second through nginx over straight to gunicorn, and the milliseconds nginx adds at the median and the 99th
percentile.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import tempfile
from pathlib import Path

from bench import wrk
from bench.systems import POST_BODY
from devstack import running_stack

log = logging.getLogger("bench.front_door")
PATHS = ("through nginx", "straight to gunicorn")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./scripts/bench front-door", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8, help="wrk's connections (the facade has 8 threads)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("hazelcast").setLevel(logging.WARNING)
    runs: dict[str, list[wrk.Result]] = {path: [] for path in PATHS}
    with tempfile.TemporaryDirectory(prefix="bench-front-door-") as tmp, running_stack(Path(tmp)) as stack:
        facade = stack.facade
        assert facade.app_port is not None, "the facade runs without its nginx"
        urls = {PATHS[0]: stack.url, PATHS[1]: f"http://127.0.0.1:{facade.app_port}/facade"}
        # Warm both paths (connections, imports, the map's first writes) before anything counts.
        for url in urls.values():
            wrk.run(url, args.connections, 2, method="POST", body=POST_BODY)
        for r in range(args.rounds):
            for path in random.sample(PATHS, len(PATHS)):
                result = wrk.run(urls[path], args.connections, args.seconds, method="POST", body=POST_BODY)
                runs[path].append(result)
                log.info(
                    "round %d, %-20s %7.0f/s  p50 %6.2f ms  p99 %6.2f ms  %d errors",
                    r + 1, path, result.rps, result.p50_ms, result.p99_ms, result.errors,
                )  # fmt: skip
    medians = {
        path: {
            "rps": statistics.median(r.rps for r in results),
            "p50_ms": statistics.median(r.p50_ms for r in results),
            "p99_ms": statistics.median(r.p99_ms for r in results),
            "errors": sum(r.errors for r in results),
        }
        for path, results in runs.items()
    }
    for path, m in medians.items():
        log.info("median %-20s %7.0f/s  p50 %6.2f ms  p99 %6.2f ms  %d errors", path, *m.values())
    through, straight = medians[PATHS[0]], medians[PATHS[1]]
    log.info(
        "nginx's cost: requests/s through it over straight %.3f; %+.2f ms at the median, %+.2f ms at p99 "
        "(POST /facade, %d connections, %d rounds of %d s)",
        through["rps"] / straight["rps"], through["p50_ms"] - straight["p50_ms"],
        through["p99_ms"] - straight["p99_ms"], args.connections, args.rounds, args.seconds,
    )  # fmt: skip
    return 1 if through["errors"] or straight["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
