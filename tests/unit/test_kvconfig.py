from servicekit import kvconfig
from stackctl import postgres


def test_seed_data_holds_every_key_the_services_read():
    values = kvconfig.seed_values()
    assert set(values) == {kvconfig.KEY_CLUSTER_NAME, kvconfig.KEY_MEMBERS, kvconfig.KEY_MAP, kvconfig.KEY_QUEUE,
                           postgres.KEY_DATABASE, postgres.KEY_USER}  # fmt: skip
    assert values[kvconfig.KEY_MEMBERS].split(",") == ["127.0.0.1:5701", "127.0.0.1:5702", "127.0.0.1:5703"]
