# Configuration for the local dev agent that ./scripts/up starts (`consul agent -dev -config-file=...`).
# The dev agent keeps everything in memory: a restart forgets KV and what was registered through its API,
# which is why ./scripts/up seeds KV and every instance re-registers itself. The Hazelcast members are
# service definitions in the run directory's consul.d/ (-config-dir), so the agent loads them again itself.
datacenter  = "dc1"
node_name   = "dev"
bind_addr   = "127.0.0.1"
client_addr = "127.0.0.1"
ui          = true
log_level   = "INFO"

# No ports here: ./scripts/up passes them on the command line (the HTTP port from CONSUL_HTTP_ADDR, the
# others from STACK_PORT_OFFSET), and so do the tests, each agent on its own free ports.

# Cumulative counters at /v1/agent/metrics?format=prometheus, e.g. how many discovery queries
# (consul_http_GET_v1_health_service__count) the services make.
telemetry {
  prometheus_retention_time = "1h"
  disable_hostname          = true
}
