# Shared by the scripts: paths, ports and the tools they use. Source it; it defines, it runs nothing.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$ROOT/.venv
TOOLS=${STACK_TOOLS_DIR:-$ROOT/.tools}
CONSUL_VERSION=1.8.7
HAZELCAST_VERSION=5.5.0
HAZELCAST_JAR=$TOOLS/hazelcast/hazelcast-$HAZELCAST_VERSION.jar
# The SHA-256 of hazelcast-5.5.0.jar as Maven Central serves it (it publishes the same value beside the
# jar): ./scripts/install checks the jar against it on every run. Change it with HAZELCAST_VERSION.
HAZELCAST_JAR_SHA256=cf560b40b988526e780e4fae12cb6fe01c5158bb9e00839882857f32b544a19e
# The Consul versions the project runs on, from the Debian package ./scripts/install unpacks (1.8.7) to
# the newest one its tests have passed on (1.14.8, which adds the gRPC TLS port 8503 to a dev agent):
# a consul on PATH outside [CONSUL_MIN, CONSUL_BELOW) is ignored.
CONSUL_MIN=1.8.0
CONSUL_BELOW=1.15.0
export HAZELCAST_JAR

# Where the stack of ./scripts/up keeps supervisord's pid file and socket, and every log. Overridable,
# with STACK_PORT_OFFSET, so a second stack (the tests of the scripts do this) runs beside the first.
STACK_RUN_DIR=$(realpath -m "${STACK_RUN_DIR:-$ROOT/run}")
STACK_LOG_DIR=$(realpath -m "${STACK_LOG_DIR:-$ROOT/logs}")
export STACK_RUN_DIR STACK_LOG_DIR

# The stack's ports: these defaults plus STACK_PORT_OFFSET. scripts/supervisord.conf reads them.
# The Consul HTTP port is the one in CONSUL_HTTP_ADDR (./scripts/up parses it).
STACK_PORT_OFFSET=${STACK_PORT_OFFSET:-0}
export CONSUL_SERVER_PORT=$((8300 + STACK_PORT_OFFSET)) CONSUL_SERF_LAN_PORT=$((8301 + STACK_PORT_OFFSET)) \
  CONSUL_SERF_WAN_PORT=$((8302 + STACK_PORT_OFFSET)) CONSUL_GRPC_PORT=$((8502 + STACK_PORT_OFFSET)) \
  CONSUL_DNS_PORT=$((8600 + STACK_PORT_OFFSET))
export HAZELCAST_PORT_1=$((5701 + STACK_PORT_OFFSET)) HAZELCAST_PORT_2=$((5702 + STACK_PORT_OFFSET)) \
  HAZELCAST_PORT_3=$((5703 + STACK_PORT_OFFSET))
export FACADE_PORT=$((8080 + STACK_PORT_OFFSET)) LOGGING_PORT_1=$((8081 + STACK_PORT_OFFSET)) \
  LOGGING_PORT_2=$((8082 + STACK_PORT_OFFSET)) LOGGING_PORT_3=$((8083 + STACK_PORT_OFFSET)) \
  MESSAGES_PORT_1=$((8084 + STACK_PORT_OFFSET)) MESSAGES_PORT_2=$((8085 + STACK_PORT_OFFSET))
export CONSUL_HTTP_ADDR=${CONSUL_HTTP_ADDR:-127.0.0.1:$((8500 + STACK_PORT_OFFSET))}
SUPERVISOR_CONF=$ROOT/scripts/supervisord.conf

# "1.8.7" from the first line of `consul version` ("Consul v1.8.7"); fails for anything else.
consul_version() {
  local out
  out=$(timeout 10 "$1" version 2>/dev/null) || return 1
  [[ ${out%%$'\n'*} =~ ^Consul\ v([0-9]+)\.([0-9]+)\.([0-9]+) ]] || return 1
  echo "${BASH_REMATCH[1]}.${BASH_REMATCH[2]}.${BASH_REMATCH[3]}"
}

# Whether a version "X.Y.Z" is in [CONSUL_MIN, CONSUL_BELOW).
consul_supported() {
  local v; v=$(version_number "$1")
  [ "$v" -ge "$(version_number "$CONSUL_MIN")" ] && [ "$v" -lt "$(version_number "$CONSUL_BELOW")" ]
}
version_number() { local IFS=.; set -- $1; echo $((10#$1 * 1000000 + 10#$2 * 1000 + 10#$3)); }

# A consul on PATH in a supported version wins over the one ./scripts/install unpacks; any other is
# ignored, with a line on stderr saying so. devstack/consul_agent.py asks this function too.
consul_bin() {
  local found version=""
  if found=$(command -v consul 2>/dev/null); then
    if version=$(consul_version "$found") && consul_supported "$version"; then echo "$found"; return 0; fi
    version=${version:+v$version}
    say "ignoring $found (${version:-no version}): this project runs Consul >= $CONSUL_MIN, < $CONSUL_BELOW" >&2
  fi
  if [ -x "$TOOLS/consul/usr/bin/consul" ]; then echo "$TOOLS/consul/usr/bin/consul"
  else return 1
  fi
}

ctl() { "$VENV/bin/supervisorctl" -c "$SUPERVISOR_CONF" "$@"; }
ops() { "$VENV/bin/python" -m servicekit.ops "$@"; }
# supervisord's pid, when the one of this run directory is alive: not a zombie (a killed supervisord
# may stay one) and not another process that got its pid since.
supervisord_pid() {
  local pid stat args
  pid=$(cat "$STACK_RUN_DIR/supervisord.pid" 2>/dev/null) && [ -n "$pid" ] || return 1
  read -r stat args < <(ps -o stat=,args= -p "$pid" 2>/dev/null) || return 1
  [[ $stat != Z* && $args == *supervisord* ]] && echo "$pid"
}

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
