"""What the tests and figures count of a Consul agent's own metrics (devstack.consul_agent.summed_counts):
the `_count` samples of the families named, read as Prometheus reads the agent's text."""

from __future__ import annotations

from devstack.consul_agent import summed_counts

AGENT = "\n".join(
    [
        "# HELP consul_http_GET_v1_health_service_logging_service consul_http_GET_v1_health_service_logging_service",
        "# TYPE consul_http_GET_v1_health_service_logging_service summary",
        'consul_http_GET_v1_health_service_logging_service{quantile="0.5"} 0.25',
        'consul_http_GET_v1_health_service_logging_service{quantile="0.9"} NaN',
        "consul_http_GET_v1_health_service_logging_service_sum 12.5",
        "consul_http_GET_v1_health_service_logging_service_count 7",
        "# TYPE consul_http_GET_v1_kv summary",
        "consul_http_GET_v1_kv_sum 1.5",
        "consul_http_GET_v1_kv_count 2",
        "# TYPE consul_raft_apply counter",
        "consul_raft_apply 40",
        "# TYPE consul_runtime_malloc_count gauge",
        "consul_runtime_malloc_count 9",
        "",
    ]
)


def test_the_count_samples_of_the_families_named_are_summed():
    assert summed_counts(AGENT, "consul_http_GET_v1_health_service") == 7
    assert summed_counts(AGENT, ("consul_http_GET_v1_health_service", "consul_http_GET_v1_kv")) == 9
    assert summed_counts(AGENT, "consul_http_") == 9
    assert summed_counts(AGENT, "consul_runtime_") == 9
    assert summed_counts(AGENT, "consul_raft_") == 0


def test_label_values_with_spaces_and_samples_with_timestamps_are_read_as_prometheus_reads_them():
    text = "\n".join(
        [
            "# TYPE consul_http_GET_v1_kv_config summary",
            'consul_http_GET_v1_kv_config_count{path="/v1/kv/a b"} 3',
            "consul_http_GET_v1_kv_other_count 4 1700000000000",
            "",
        ]
    )
    assert summed_counts(text, "consul_http_GET_v1_kv") == 7
