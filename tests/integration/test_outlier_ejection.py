"""Outlier ejection: a logging instance whose /health passes but whose every POST /logging answers 500.

The logging and messages instances are stubs in the test process (devstack.stubs), registered in the
test's own Consul agent with the product's service definition; the facade is the real one under gunicorn.
Consul keeps the bad instance passing all along: only the facade's workers can notice it fails.
"""

from __future__ import annotations

import math
import time
import uuid

import pytest

from devstack import Load
from devstack.stubs import StubInstance
from servicekit.gunicorn_config import WORKER_SETTINGS
from upstream.outliers import BASE_EJECTION, CONSECUTIVE_FAILURES

TIMEOUT = 10
POSTS = 200
CLIENTS = 4


@pytest.fixture
def one_bad_logging_instance(facade_before):
    """A facade in front of two good logging stubs and one that answers 500 to every POST /logging."""
    stubs = [StubInstance("logging-service"), StubInstance("logging-service"),
             StubInstance("logging-service", post_status=500), StubInstance("messages-service")]  # fmt: skip
    return facade_before(stubs), stubs


def readmissions(seconds: float) -> int:
    """How often one worker lets an ejected instance back in within `seconds` of its first ejection: the
    ejections last BASE_EJECTION, then twice that, and so on."""
    return math.floor(math.log2(seconds / BASE_EJECTION + 1))


def test_an_instance_that_answers_500_while_passing_is_ejected_and_no_request_fails(one_bad_logging_instance):
    facade, stubs = one_bad_logging_instance
    good, bad = stubs[:2], stubs[2]
    tag = uuid.uuid4().hex[:6]

    started = time.monotonic()
    with Load(lambda s, n: s.post(f"{facade.url}/facade", json={"msg": f"{tag}-{n}"}, timeout=TIMEOUT),
              clients=CLIENTS, max_requests=POSTS, max_seconds=30) as load:  # fmt: skip
        load.finish(timeout=40)
    seconds = time.monotonic() - started

    assert len(load.outcomes) == POSTS
    assert load.failures() == [], f"failed requests: {[o.kind for o in load.failures()][:10]}"
    # Each worker (its own ejection state) sends the bad instance CONSECUTIVE_FAILURES calls before it
    # ejects it, then one call each time it lets it back in (a failure at once ejects it again, for twice
    # as long); the other clients' requests may have been sent there already when it is ejected. A run of
    # 2 to 6 s: 2 * (3 + 1) + 3 = 11. Without ejection it would get about a third of the 200 first tries.
    workers = WORKER_SETTINGS["workers"]
    bound = workers * (CONSECUTIVE_FAILURES + readmissions(seconds)) + CLIENTS - 1
    assert bad.count("POST") <= bound, (
        f"the bad instance got {bad.count('POST')} calls in {seconds:.1f} s (bound {bound}); "
        f"good ones: {[g.count('POST') for g in good]}"
    )
    assert bad.count("POST") >= 1, "the bad instance was in rotation"
    assert sum(g.count("POST") for g in good) == POSTS
