"""The Prometheus configuration of docs/OPERATIONS.md (*Metrics*), applied to what Consul discovery hands
Prometheus for an instance, the way Prometheus applies relabel rules: it scrapes the metrics port of the
instance's meta, not its public port. (No Prometheus here: its relabelling is regexes anchored at both ends
over the source labels joined by ";", `$1` for a group, and `keep` dropping a target whose joined value does
not match.)"""

from __future__ import annotations

import re

import yaml

from devstack import ROOT
from servicekit import metrics_files
from servicekit.registration import service_definition
from servicekit.settings import Settings


def readme_scrape_config() -> dict:
    text = (ROOT / "docs" / "OPERATIONS.md").read_text()
    block = re.search(r"```yaml\n(scrape_configs:.*?)```", text, re.DOTALL)
    assert block, "no scrape_configs block in docs/OPERATIONS.md"
    (job,) = yaml.safe_load(block.group(1))["scrape_configs"]
    return job


def relabel(labels: dict[str, str], rules: list[dict]) -> dict[str, str] | None:
    labels = dict(labels)
    for rule in rules:
        value = rule.get("separator", ";").join(labels.get(name, "") for name in rule.get("source_labels", []))
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if rule.get("action", "replace") == "keep":
            if match is None:
                return None
            continue
        if match is not None:
            labels[rule["target_label"]] = match.expand(rule.get("replacement", "$1").replace("$", "\\"))
    return labels


def discovered(settings: Settings) -> dict[str, str]:
    """The labels consul_sd_configs gives an instance registered as servicekit registers it."""
    definition = service_definition(settings)
    labels = {
        "__address__": f"{definition['address']}:{definition['port']}",
        "__metrics_path__": "/metrics",
        "__meta_consul_service": definition["name"],
        "__meta_consul_service_id": definition["service_id"],
    }
    labels.update({f"__meta_consul_service_metadata_{k}": v for k, v in definition["meta"].items()})
    return labels


def test_the_readme_scrapes_each_instance_at_its_address_on_the_metrics_port_of_its_meta():
    job = readme_scrape_config()
    assert set(job["consul_sd_configs"][0]["services"]) == {"facade-service", "logging-service", "messages-service"}
    env = {"SERVICE_HOST": "192.0.2.21", "INSTANCE_HOST": "app1", "METRICS_PORT": "9181"}
    settings = Settings.from_env("logging-service", 8081, env=env)
    target = relabel(discovered(settings), job["relabel_configs"])
    assert target is not None
    assert target["__address__"] == "192.0.2.21:9181"
    assert target["__metrics_path__"] == metrics_files.METRICS_PATH
    assert target["instance"] == "logging-service-app1-8081" and target["service"] == "logging-service"


def test_the_readme_skips_what_exports_no_metrics():
    job = readme_scrape_config()
    member = {"__address__": "192.0.2.21:5701", "__meta_consul_service": "hazelcast"}
    assert relabel(member, job["relabel_configs"]) is None
