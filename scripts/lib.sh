# Shared by the scripts: paths, ports and the tools they use. Source it; it defines, it runs nothing.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$ROOT/.venv
TOOLS=${STACK_TOOLS_DIR:-$ROOT/.tools}
CONSUL_VERSION=1.8.7
# Ports, instance counts, the Hazelcast version and jar: written once, in conf/stack.env (Python reads it too).
STACK_ENV=$ROOT/conf/stack.env
# The instance counts may come from the environment instead, to shrink the stack (a small machine, the
# tests of the scripts): HAZELCAST_INSTANCES=2 LOGGING_INSTANCES=1 MESSAGES_INSTANCES=1 ./scripts/up.
# conf/stack.env's counts stay in STACK_DEFAULT_<NAME> (./scripts/up checks the override against them).
STACK_COUNTS="HAZELCAST_INSTANCES LOGGING_INSTANCES MESSAGES_INSTANCES FACADE_INSTANCES"
declare -A stack_count_overrides=()
for stack_count in $STACK_COUNTS; do
  [ -z "${!stack_count:-}" ] || stack_count_overrides[$stack_count]=${!stack_count}
done
source "$STACK_ENV"
for stack_count in $STACK_COUNTS; do
  printf -v "STACK_DEFAULT_$stack_count" %s "${!stack_count}"
  [ -z "${stack_count_overrides[$stack_count]:-}" ] || printf -v "$stack_count" %s "${stack_count_overrides[$stack_count]}"
done
unset stack_count stack_count_overrides
HAZELCAST_JAR=$TOOLS/$HAZELCAST_JAR_IN_TOOLS
STORE_JAR=$TOOLS/$STORE_JAR_IN_TOOLS
# The Consul versions the project runs on, from the Debian package ./scripts/install unpacks (1.8.7) to
# the newest one its tests have passed on (1.14.8, which adds the gRPC TLS port 8503 to a dev agent):
# a consul on PATH outside [CONSUL_MIN, CONSUL_BELOW) is ignored.
CONSUL_MIN=1.8.0
CONSUL_BELOW=1.15.0
export HAZELCAST_JAR STORE_JAR

# Where the stack of ./scripts/up keeps supervisord's pid file and socket, and every log. Overridable,
# with STACK_PORT_OFFSET, so a second stack (the tests of the scripts do this) runs beside the first.
STACK_RUN_DIR=$(realpath -m "${STACK_RUN_DIR:-$ROOT/run}")
STACK_LOG_DIR=$(realpath -m "${STACK_LOG_DIR:-$ROOT/logs}")
export STACK_RUN_DIR STACK_LOG_DIR

# The stack's ports: the defaults of conf/stack.env plus STACK_PORT_OFFSET, exported for
# scripts/supervisord.conf. The Consul HTTP port is the one in CONSUL_HTTP_ADDR (./scripts/up parses it).
STACK_PORT_OFFSET=${STACK_PORT_OFFSET:-0}
for stack_port in $(sed -n 's/^\([A-Z0-9_]*_PORT\)=.*/\1/p' "$STACK_ENV"); do
  export "$stack_port=$((${!stack_port} + STACK_PORT_OFFSET))"
done
export HAZELCAST_INSTANCES LOGGING_INSTANCES MESSAGES_INSTANCES FACADE_INSTANCES
export CONSUL_HTTP_ADDR=${CONSUL_HTTP_ADDR:-127.0.0.1:$CONSUL_HTTP_PORT}
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

# Each program of the stack and the ports it binds, the way scripts/supervisord.conf starts it: one
# line a process, "group:process port...", the consul line first, then postgres. A service instance binds
# its port and its metrics port (the port plus METRICS_PORT_OFFSET, as servicekit.settings computes it);
# a facade's port is its nginx's, and its gunicorn binds the port plus APP_PORT_OFFSET instead.
program_ports() {
  echo "consul $CONSUL_HTTP_PORT $CONSUL_SERVER_PORT $CONSUL_SERF_LAN_PORT $CONSUL_SERF_LAN_PORT/udp" \
    "$CONSUL_SERF_WAN_PORT $CONSUL_SERF_WAN_PORT/udp $CONSUL_GRPC_PORT $CONSUL_DNS_PORT $CONSUL_DNS_PORT/udp"
  echo "postgres $POSTGRES_PORT"
  local program group first count port metrics
  for program in hazelcast logging messages facade; do
    group=services; [ "$program" != hazelcast ] || group=hazelcast
    first=${program^^}_PORT count=${program^^}_INSTANCES
    for ((port = ${!first}; port < ${!first} + ${!count}; port++)); do
      metrics=" $((port + METRICS_PORT_OFFSET))"; [ "$group" = services ] || metrics=
      if [ "$program" = facade ]; then
        echo "nginx:nginx-$port $port"
        echo "$group:$program-$port $((port + APP_PORT_OFFSET))$metrics"
      else
        echo "$group:$program-$port $port$metrics"
      fi
    done
  done
}
# The ports of one program's instances, e.g. `instance_ports hazelcast` -> 5701 5702 5703.
instance_ports() {
  local first=${1^^}_PORT count=${1^^}_INSTANCES port
  for ((port = ${!first}; port < ${!first} + ${!count}; port++)); do echo "$port"; done
}

# The nginx in front of each facade: NGINX_BIN when set, else one on PATH, else Debian's (in /usr/sbin, which
# a user's PATH may leave out). stackctl/front_door.py looks in the same places.
nginx_bin() {
  local found
  if [ -n "${NGINX_BIN:-}" ]; then found=$NGINX_BIN
  else found=$(command -v nginx 2>/dev/null) || found=/usr/sbin/nginx
  fi
  [ -x "$found" ] && echo "$found"
}

ctl() { "$VENV/bin/supervisorctl" -c "$SUPERVISOR_CONF" "$@"; }
ops() { "$VENV/bin/python" -m stackctl "$@"; }
# supervisord's pid, when the one of this run directory is alive: not a zombie (a killed supervisord
# may stay one) and not another process that got its pid since, another stack's supervisord included
# (pids come round within minutes on a busy machine): it was started for this STACK_RUN_DIR.
supervisord_pid() {
  local pid stat args
  pid=$(cat "$STACK_RUN_DIR/supervisord.pid" 2>/dev/null) && [ -n "$pid" ] || return 1
  # -ww: ps cuts its lines to $COLUMNS otherwise, and a long venv path pushes the name past it.
  read -r stat args < <(ps -ww -o stat=,args= -p "$pid" 2>/dev/null) || return 1
  [[ $stat != Z* && $args == *supervisord* ]] || return 1
  grep -qxzF "STACK_RUN_DIR=$STACK_RUN_DIR" "/proc/$pid/environ" 2>/dev/null || return 1
  echo "$pid"
}

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
