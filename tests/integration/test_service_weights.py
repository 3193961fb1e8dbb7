"""Consul service weights: an instance in `warning` stays in rotation with its warning weight.

The logging instances are stubs registered in the test's own Consul agent with the product's service
definition (weights included); one answers its /health with 429, which Consul's HTTP check reads as
`warning`. The facade is the real one under gunicorn, with the default (random) policy.
"""

from __future__ import annotations

import uuid

import pytest

from devstack import Load
from devstack.stubs import StubInstance
from servicekit.settings import Settings

TIMEOUT = 10
POSTS = 420


@pytest.fixture
def one_warning_logging_instance(facade_before):
    stubs = [StubInstance("logging-service"), StubInstance("logging-service"),
             StubInstance("logging-service", health_status=429), StubInstance("messages-service")]  # fmt: skip
    return facade_before(stubs), stubs


def test_an_instance_in_warning_gets_about_its_warning_weights_share(one_warning_logging_instance):
    facade, stubs = one_warning_logging_instance
    passing, warning = stubs[:2], stubs[2]
    tag = uuid.uuid4().hex[:6]
    with Load(lambda s, n: s.post(f"{facade.url}/facade", json={"msg": f"{tag}-{n}"}, timeout=TIMEOUT),
              clients=4, max_requests=POSTS, max_seconds=40) as load:  # fmt: skip
        load.finish(timeout=50)
    assert load.failures() == []
    weights = Settings(service_name="logging-service", port=1)
    share = weights.weight_warning / (weights.weight_warning + 2 * weights.weight_passing)
    # 420 * 1/21 = 20 expected, a binomial spread of about 4.4: 5 to 40 is more than 3 spreads either
    # side; a third (140) if the weights were ignored, none if warning instances were left out.
    expected = POSTS * share
    got = warning.count("POST")
    assert expected / 4 <= got <= 2 * expected, (
        f"the warning instance got {got} of {POSTS} (expected about {expected:.0f}); "
        f"passing ones: {[p.count('POST') for p in passing]}"
    )
