# Shared by the scripts: paths and the tools they use. Source it; it defines, it runs nothing.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$ROOT/.venv
TOOLS=$ROOT/.tools
CONSUL_VERSION=1.8.7
HAZELCAST_VERSION=5.5.0
HAZELCAST_JAR=$TOOLS/hazelcast/hazelcast-$HAZELCAST_VERSION.jar
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
