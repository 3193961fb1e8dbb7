# Shared by the scripts: paths and the tools they use. Source it; it defines, it runs nothing.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$ROOT/.venv
TOOLS=$ROOT/.tools
CONSUL_VERSION=1.8.7
HAZELCAST_VERSION=5.5.0
HAZELCAST_JAR=$TOOLS/hazelcast/hazelcast-$HAZELCAST_VERSION.jar
# The SHA-256 of hazelcast-5.5.0.jar as Maven Central serves it (it publishes the same value beside the
# jar): ./scripts/install checks the jar against it on every run. Change it with HAZELCAST_VERSION.
HAZELCAST_JAR_SHA256=cf560b40b988526e780e4fae12cb6fe01c5158bb9e00839882857f32b544a19e
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export HAZELCAST_JAR

# A consul already on PATH wins over the one ./scripts/install unpacks.
consul_bin() {
  if command -v consul >/dev/null 2>&1; then command -v consul
  elif [ -x "$TOOLS/consul/usr/bin/consul" ]; then echo "$TOOLS/consul/usr/bin/consul"
  else return 1
  fi
}

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
