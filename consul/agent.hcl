# Configuration for the local dev agent that ./scripts/up starts (`consul agent -dev -config-file=...`).
# The dev agent keeps everything in memory: a restart forgets services and KV, which is why
# ./scripts/up seeds KV and every instance re-registers itself.
datacenter  = "dc1"
node_name   = "dev"
bind_addr   = "127.0.0.1"
client_addr = "127.0.0.1"
ui          = true
log_level   = "INFO"

ports {
  http = 8500
}
