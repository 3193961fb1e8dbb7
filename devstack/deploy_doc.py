"""docs/DEPLOY.md, written from the templates in conf/hosts/ that the simulated hosts run, and its alerts from
conf/prometheus/alerts.yml (`./scripts/hosts deploy-docs`; tests/unit/test_deploy_doc.py fails when the file is
behind them, and tests/integration/test_deploy_configs.py runs `consul validate` on every agent configuration
shown).

The example machines use addresses of 192.0.2.0/24, the range reserved for documentation.
"""

from __future__ import annotations

import sys

import yaml

from devstack import host_config
from devstack.host_config import DATACENTER, HAZELCAST_PORT, SERVICE_PORTS, Layout, render, secret_files
from devstack.processes import ROOT
from servicekit.settings import app_port, default_metrics_port
from stackctl import front_door

DOC = ROOT / "docs" / "DEPLOY.md"
ALERT_RULES = ROOT / "conf" / "prometheus" / "alerts.yml"
CONFIG_DIR = "/etc/consul.d"
SERVERS = {"consul1": "192.0.2.11", "consul2": "192.0.2.12", "consul3": "192.0.2.13"}
APPS = {"app1": "192.0.2.21", "app2": "192.0.2.22", "app3": "192.0.2.23"}
GOSSIP_KEY = "<output of: consul keygen>"
SERVICE_NAMES = host_config.SERVICE_NAMES
LAYOUT = Layout(
    root="/opt/messages",
    venv_bin="/opt/messages/.venv/bin",
    consul_bin="/usr/bin/consul",
    consul_dir=CONFIG_DIR,
    data_dir="/var/lib/consul",
    log_dir="/var/log/messages",
    run_dir="/run/messages",
    token_dir="/etc/messages/tokens",
    metrics_dir="/var/lib/messages/metrics",
)


def agent_configs(config_dir: str = CONFIG_DIR) -> dict[str, str]:
    """Every agent configuration file the document shows, by file name: a server's and a client's, each with
    the ACL and TLS blocks (config files of one -config-dir)."""
    servers = list(SERVERS.values())
    return {
        "server.hcl": host_config.consul_config(
            "consul1", SERVERS["consul1"], servers, GOSSIP_KEY, "/var/lib/consul", server=True
        ),
        "server-acl.hcl": render("consul-acl.hcl.tmpl", agent_token="<agent token of consul1>"),
        "server-tls.hcl": render(
            "consul-tls-server.hcl.tmpl", config_dir=config_dir, datacenter=DATACENTER, address=SERVERS["consul1"]
        ),
        "client.hcl": host_config.consul_config(
            "app1", APPS["app1"], servers, GOSSIP_KEY, "/var/lib/consul", server=False
        ),
        "client-acl.hcl": render("consul-acl.hcl.tmpl", agent_token="<agent token of app1>"),
        "client-tls.hcl": render("consul-tls-client.hcl.tmpl", config_dir=config_dir, address=APPS["app1"]),
    }


def secrets_table() -> str:
    """Every file of docs/DEPLOY.md that holds a secret, with its owner and mode (host_config.secret_files,
    which the simulation writes and its tests check)."""
    rows = {path: ("the Consul servers", user) for path, user in secret_files(LAYOUT, app=False).items()}
    for path, user in secret_files(LAYOUT, app=True).items():
        rows[path] = ("every host" if path in rows else "application hosts", user)
    lines = ["| File | On | Owner | Mode |", "| --- | --- | --- | --- |"]
    lines += [f"| `{path}` | {where} | `{user}` | `0600` |" for path, (where, user) in rows.items()]
    return "\n".join(lines) + "\n"


def _code(language: str, text: str) -> str:
    return f"```{language}\n{text.strip()}\n```\n"


def _ports_table() -> str:
    rows = [
        ("8300/tcp", "every host", "the servers", "Consul server RPC (client agents forward to the servers)"),
        ("8301/tcp+udp", "every host", "every host", "Consul LAN gossip (membership, failure detection)"),
        ("8302/tcp+udp", "servers", "servers of other datacenters", "Consul WAN gossip: only with several datacenters"),
        (
            "8501/tcp",
            "operators",
            "each host",
            "Consul HTTPS API; plain HTTP (8500) listens on 127.0.0.1 only, for the host's own services and tools",
        ),  # fmt: skip
        ("8600/tcp+udp", "the host itself", "each host", "Consul DNS, if used"),
        (
            f"{HAZELCAST_PORT}/tcp",
            "application hosts",
            "application hosts",
            "Hazelcast: member to member, and the services' clients to every member",
        ),  # fmt: skip
        (
            f"{SERVICE_PORTS['logging']}/tcp",
            "application hosts",
            "application hosts",
            "logging_svc (facade to logging)",
        ),
        (
            f"{SERVICE_PORTS['messages']}/tcp",
            "application hosts",
            "application hosts",
            "messages_svc (facade to messages)",
        ),  # fmt: skip
        (
            f"{SERVICE_PORTS['facade']}/tcp",
            "users, load balancer",
            "application hosts",
            "the facade, through its nginx",
        ),
        (
            f"{app_port(SERVICE_PORTS['facade'], {})}/tcp",
            "nobody: 127.0.0.1 only",
            "the host itself",
            "the facade's gunicorn, behind its nginx (`APP_PORT`, its port plus 2000)",
        ),
        (
            ", ".join(f"{default_metrics_port(port)}/tcp" for port in sorted(SERVICE_PORTS.values())),
            "Prometheus",
            "application hosts",
            "each service's metrics (`METRICS_PORT`, its port plus 1000, in its Consul meta as `metrics_port`)",
        ),
    ]
    lines = ["| Port | From | To | What |", "| --- | --- | --- | --- |"]
    lines += [f"| {port} | {source} | {target} | {what} |" for port, source, target, what in rows]
    return "\n".join(lines) + "\n"


def _environment_table() -> str:
    env = LAYOUT.environment("logging", "app1", APPS["app1"], SERVICE_PORTS["logging"])
    why = {
        "CONSUL_HTTP_ADDR": "the host's own agent; every service and member registers and discovers through it",
        "SERVICE_HOST": "the host's address: the service binds it, registers it, and Consul checks it there. "
        "Never 127.0.0.1 on several hosts: another host would call its own loopback",
        "INSTANCE_HOST": "the host's name in the instance ids (`logging-service-app1-8081`)",
        "HAZELCAST_PARTITION_GROUPS": "`host`: a backup never sits on the same host as its primary",
        "PORT": f"the service's port (logging {SERVICE_PORTS['logging']}, messages {SERVICE_PORTS['messages']}, "
        f"facade {SERVICE_PORTS['facade']}); a member's is {HAZELCAST_PORT}",
        "METRICS_DIR": "where its gunicorn workers keep their metrics, one 0700 directory per instance in it "
        "(`logging-service-app1-8081/`), which the instance makes and refuses when another user did",
        "CONSUL_HTTP_TOKEN_FILE": "the file with the program's own ACL token (see ACLs and the files that hold "
        "secrets); never `CONSUL_HTTP_TOKEN` inline",
    }
    lines = ["| Variable | On app1 (logging) | Why |", "| --- | --- | --- |"]
    lines += [f"| `{name}` | `{value}` | {why.get(name, '')} |" for name, value in env.items()]
    return "\n".join(lines) + "\n"


def _simulation() -> list[str]:
    """`./scripts/hosts`: the configuration below, run on one machine in network namespaces."""
    return [
        "## Several hosts on one machine: `./scripts/hosts`\n",
        "`./scripts/up` runs everything on one machine and one address. `./scripts/hosts` runs the same "
        "services the way several machines would, each simulated host a network namespace of this machine "
        "(root needed), wired to a bridge with addresses from 127.100.0.0/24 (loopback: nothing leaves the "
        "machine):\n",
        _code(
            "sh",
            "sudo ./scripts/hosts up            # --apps N for N application hosts (default 3); about a minute\n"
            "sudo ./scripts/hosts status        # hosts, their link, their processes, Consul's view of every "
            "instance\n"
            "sudo ./scripts/hosts run app1 -- curl -s -X POST http://127.100.0.21:8080/facade \\\n"
            "    -H 'Content-Type: application/json' -d '{\"msg\": \"hello\"}'\n"
            '# {"id":"...","msg":"hello","logged_by":"logging-service-app3-8081"}\n'
            "sudo ./scripts/hosts run app1 -- curl -s http://127.0.0.1:8080/facade   # each service also listens "
            "on the host's 127.0.0.1\n"
            "sudo ./scripts/hosts addr app2     # 127.100.0.22\n"
            "sudo ./scripts/hosts cut app3      # its link down: it runs on, nobody reaches it; `heal app3` "
            "plugs it back\n"
            "sudo ./scripts/hosts kill app3     # every process of the host killed at once, as in a power cut\n"
            "sudo ./scripts/hosts upgrade --to main   # the services restarted host by host on main's code, "
            "drained first\n"
            "sudo ./scripts/hosts down          # every process killed, every namespace removed (Consul data and "
            "logs kept)",
        ),
        "A failed `up` says what failed and removes what it made (`--keep` leaves the hosts running to look "
        "at them). Prefixes and host names are letters and digits only, so `down` of `hosts` never touches "
        "another simulation's namespaces (`HOSTS_PREFIX=hosts2`).\n",
        "\n".join(
            [
                "| Host | Address | Runs |",
                "| --- | --- | --- |",
                "| consul1, consul2, consul3 | 127.100.0.11-13 | a Consul server (data directory, `bootstrap_expect "
                "= 3`, `retry_join`, gossip encryption) |",
                "| app1 ... appN | 127.100.0.21 on | a Consul client agent (HTTP API on 127.0.0.1:8500, HTTPS on the "
                "host's address :8501), a Hazelcast member on :5701, logging_svc :8081, messages_svc :8084, facade "
                ":8080 (its nginx; the facade's gunicorn on the host's 127.0.0.1:10080) (their metrics on :9081, "
                ":9084, :9080) |",
            ]
        )
        + "\n",
        "Each host's processes run under a supervisord of their own, and see the host's name as their "
        "hostname, so the instance ids name the host (`logging-service-app2-8081`). Every service binds, "
        "registers and is checked at its host's address (`SERVICE_HOST`), with its own host's agent "
        "(`CONSUL_HTTP_ADDR=127.0.0.1:8500`); a facade finds every host's instances through its local agent. "
        "A member binds the host's address and joins the members passing in Consul (the list in KV while "
        "none passes). The configuration is rendered from the templates in `conf/hosts/`, the same ones "
        "docs/DEPLOY.md shows for real machines. Consul runs with ACLs as documented there: default deny, "
        "bootstrapped once by `up` (the management token and every other secret in `run/hosts/acl.json`, "
        "mode 0600), a policy and token per agent and per service on each host made from the documented "
        "policies, each program with its own token in its own file (`run/hosts/<host>/tokens/`, "
        "`CONSUL_HTTP_TOKEN_FILE`). `./scripts/hosts` uses the management token itself, whatever "
        "`CONSUL_HTTP_TOKEN` says (`sudo -E` keeps yours); to ask Consul by hand, pass it (`-H "
        '"X-Consul-Token: ..."`). TLS as documented too: a CA and a server certificate naming the servers\' '
        "addresses, made once by `consul tls` (`run/hosts/tls/`), RPC verified by the servers, client "
        "agents' certificates by `auto_encrypt`, and every agent's API over HTTPS on its address (8501), "
        "which is how `./scripts/hosts` talks to them (checked against the CA, and Consul's own CA for the "
        "client agents' certificates: `run/hosts/tls/ca-bundle.pem`); plain HTTP answers on each host's "
        "127.0.0.1:8500 only, where the services call their local agent. As on real hosts, the programs run "
        "as unprivileged users that `up` makes once (`consul` for the agent, `messages` for the member and "
        "the services; supervisord alone stays root, to start them), and every file that holds a secret is "
        "of mode 0600 and of the user that reads it, from its first byte "
        "(`tests/integration/test_host_security.py`). The checkout and its Python must be readable by those "
        "users: a Python under a directory they may not enter (pyenv's under `/root`) is bound into each "
        "host's own mount namespace, with nothing else of that directory. Files live under "
        "`run/hosts/<host>/` (`HOSTS_RUN_DIR`): `supervisord.conf`, `consul.d/`, Consul's data, `tokens/`, "
        "the instances' `metrics/`, `logs/`; the gossip key is `run/hosts/gossip.key`. The namespaces are "
        "named `hosts-*` (`HOSTS_PREFIX`), so a `down` after a crash still finds them, and the tests' "
        "simulations (their own prefix) run beside yours.\n",
        "The addresses are reachable only inside the namespaces. To look at a host's Consul, ask from inside "
        "(`./scripts/hosts run consul1 -- curl -s http://127.0.0.1:8500/v1/status/leader`), or start a "
        "browser in the bridge namespace, the operator's seat at 127.100.0.1: `sudo ip netns exec hosts-net "
        "chromium https://127.100.0.11:8501/ui/` (any server serves the UI on its address over HTTPS, with a "
        "certificate of `run/hosts/tls/consul-agent-ca.pem`).\n",
        "What tests/integration/test_hosts.py measured with ACLs and TLS on (`./scripts/test "
        "tests/integration/test_hosts.py`, 5 to 7 runs, 2 shared cores; the ranges, with the number of runs, "
        "are in docs/RELIABILITY.md's measured block): a new Consul leader 2.6 to 3.5 s after the leader's "
        "host was killed; a host cut off under load out of every other facade's rotation (no worker of "
        "app1's or app2's facade lists its instances in `/health` any more) after 5.8 to 6.9 s, 0 of 153 to "
        "170 acknowledged POSTs lost (each in the log and, after the heal, consumed exactly once), 1 to 4 "
        "not acknowledged, and nothing acknowledged by the cut-off host's own facade; after `heal` back in "
        "every other facade's rotation with the same processes within 32 s (Serf tries a failed node again "
        "every 30 s, and Consul has no setting for it); a host killed whole under load: out of every other "
        "facade's rotation after 5.4 to 8.6 s, 237 to 647 acknowledged, none lost from the log, and in 2 of "
        "6 runs 1 never consumed (the last one acknowledged before the kill, taken by a poll that died with "
        "the host: the consumer window). The host owning the queue cut 1 to 10 s after `up`, right after 30 "
        "POSTs: through another host's facade, POSTs one after another, 2 failed in each of 7 runs (`503` "
        "with `Retry-After`, after 5.0 to 5.1 s and 2.2 to 2.9 s), the last failure ended 7.2 to 8.0 s after "
        'the cut and every POST after it succeeded (docs/RELIABILITY.md, "A host cut off", says which '
        "timeouts make it so). `./scripts/hosts up` takes about 50 s (the fixture's setup, 3 runs: 47 to 52 "
        "s). A cut-off member forms a cluster of its own, which refuses writes (split-brain protection, 2 "
        "members) and merges back after the heal: members look for a split to merge every "
        "`HAZELCAST_MERGE_DELAY_SECONDS` (10 in the simulation), where Hazelcast's defaults look 5 minutes "
        "after a member starts and then every 2 minutes.\n",
    ]


def front_door_config() -> str:
    """app1's nginx.conf, as `python -m stackctl front-door` renders it there (conf/nginx.conf.tmpl)."""
    home = LAYOUT.at("app1").nginx_dir
    return front_door.for_facade(
        SERVICE_PORTS["facade"], home, env={"SERVICE_HOST": APPS["app1"]}, access_log=LAYOUT.nginx_access_log
    ).config()


def markdown() -> str:
    configs = agent_configs()
    servers = ", ".join(f"{name} {addr}" for name, addr in SERVERS.items())
    apps = ", ".join(f"{name} {addr}" for name, addr in APPS.items())
    parts = [
        "# Running on several hosts\n",
        "<!-- Written by ./scripts/hosts deploy-docs from conf/hosts/; edit the templates, not this file. -->\n",
        "The configuration below is what `./scripts/hosts up` runs on its simulated hosts (see *Several hosts on "
        "one machine*, below), rendered from the same templates in `conf/hosts/` for real machines. "
        "tests/integration/test_hosts.py runs it, ACLs included: default deny, bootstrapped once, a policy and "
        "token per agent and per service on each host made from the policies shown below, each program with its "
        "own token in a file of its own (`CONSUL_HTTP_TOKEN_FILE`, devstack/host_acl.py); TLS: a CA and a server "
        "certificate made by `consul tls`, RPC verified by the servers, client agents' certificates by "
        "`auto_encrypt`, the HTTPS API on every agent's address, which the tooling uses; and least privilege: "
        "the programs run as unprivileged users and every secret is in a file of mode 0600 of the user that "
        "reads it (tests/integration/test_host_security.py checks both on running hosts). "
        "tests/integration/test_deploy_configs.py also has `consul validate` accept every agent "
        "configuration shown here, ACL and TLS blocks included. The services call their local agent over plain "
        "HTTP on 127.0.0.1:8500, which is all the plain HTTP an agent serves.\n",
        f"Example machines: Consul servers {servers}; application hosts {apps}. The checkout lives in "
        f"`{LAYOUT.root}` with its virtualenv (`./scripts/install`), Consul's configuration in `{CONFIG_DIR}`, "
        f"its data in `/var/lib/consul`, the logs in `{LAYOUT.log_dir}`.\n",
        *_simulation(),
        "## What runs where\n",
        "- Three Consul servers (one per host, `bootstrap_expect = 3`): the catalog, KV and health of the "
        "datacenter; one of them is the leader, and the cluster keeps working with one server down.\n"
        "- Each application host: a Consul client agent, one Hazelcast member, and one instance each of "
        "logging_svc, messages_svc and the facade, with nginx in front of the facade (see The facade's front "
        "door). The services register with their own host's agent at the "
        "host's address; every facade finds every host's instances through its local agent. The member is a "
        "service definition in the agent's configuration directory (`hazelcast.json`); it joins the members "
        "Consul reports passing (the list in KV `config/hazelcast/members` when none passes yet).\n"
        "- Consul KV holds the shared settings (`consul/kv/`): seed them once, from any host, with "
        "`CONSUL_HTTP_TOKEN=<management token> python -m stackctl seed-kv --members "
        f"{','.join(f'{a}:{HAZELCAST_PORT}' for a in APPS.values())}`.\n",
        "## Users, and what keeps root\n",
        "Two system users, without a home or a login shell: `consul` runs the Consul agent, `messages` the "
        "Hazelcast member and the services (`user=` in each supervisor program below):\n",
        _code(
            "sh",
            "sudo useradd --system --user-group --no-create-home --home-dir /nonexistent "
            "--shell /usr/sbin/nologin consul\n"
            "sudo useradd --system --user-group --no-create-home --home-dir /nonexistent "
            "--shell /usr/sbin/nologin messages",
        ),
        "No program needs a capability: every port is above 1024. Only supervisord runs as root, to start each "
        "program as its user; in the simulation `./scripts/hosts` also needs root, to make the network "
        "namespaces and these users. The directories, each of mode 0700 and of its user: "
        f"`{CONFIG_DIR}` and `/var/lib/consul` (`consul`), `{LAYOUT.token_dir}`, `{LAYOUT.metrics_dir}` and "
        f"`{LAYOUT.nginx_dir}` (`messages`: nginx's configuration, pid file and buffers; `/run` is emptied at "
        "boot, so make it again before supervisord starts, e.g. with systemd's `RuntimeDirectory=`); the "
        f"checkout and its virtualenv stay root's, readable by all; nginx's access log, `{LAYOUT.nginx_access_log}`, "
        "is a file of `messages` (nginx opens it by name, which supervisord's pipe would not allow it; rotate it "
        "with logrotate's `copytruncate`):\n",
        _code(
            "sh",
            f"sudo install -d -m 0700 -o consul -g consul {CONFIG_DIR} /var/lib/consul\n"
            f"sudo install -d -m 0700 -o messages -g messages {LAYOUT.token_dir} {LAYOUT.metrics_dir} "
            f"{LAYOUT.nginx_dir}\n"
            f"sudo install -m 0640 -o messages -g messages /dev/null {LAYOUT.nginx_access_log}",
        ),
        "### Files that hold secrets\n",
        "Each of these is of mode 0600 and of the user that reads it, from the moment it exists: make it empty "
        "with its owner and mode, then fill it in (an editor that writes in place keeps both), e.g. "
        f"`sudo install -m 0600 -o consul -g consul /dev/null {CONFIG_DIR}/acl.hcl && sudoedit "
        f"{CONFIG_DIR}/acl.hcl`. Never write one and chmod it after: it is readable by anyone in between. "
        "The token files hold the token alone. No secret is in `supervisord.conf` or in a process's environment "
        "(`/proc/<pid>/environ`).\n",
        secrets_table(),
        "## Ports to open between hosts\n",
        _ports_table(),
        "## The gossip key\n",
        "Gossip between agents is encrypted with one key for the whole datacenter. Make it once, "
        "`consul keygen`, and put the same value in every agent's `encrypt` (servers and clients). The "
        "simulation makes it on its first start and keeps it in its run directory (`gossip.key`).\n",
        "## Consul servers\n",
        f"`{CONFIG_DIR}/agent.hcl` on consul1 (on consul2 and consul3 only `node_name` and the addresses change):\n",
        _code("hcl", configs["server.hcl"]),
        "## Consul client agents\n",
        f"`{CONFIG_DIR}/agent.hcl` on app1:\n",
        _code("hcl", configs["client.hcl"]),
        "## ACLs: a token per agent and per service\n",
        f"Add to every agent its `{CONFIG_DIR}/acl.hcl`, with the agent's own token; on app1:\n",
        _code("hcl", configs["client-acl.hcl"]),
        "on consul1:\n",
        _code("hcl", configs["server-acl.hcl"]),
        "Bootstrap once, when the servers have a leader, and keep the management token it prints somewhere safe:\n",
        _code("sh", "consul acl bootstrap"),
        "Then, with `CONSUL_HTTP_TOKEN` set to the management token, one policy and one token per agent "
        "(policy file `agent-app1.hcl`):\n",
        _code("hcl", render("acl-agent-policy.hcl.tmpl", node="app1")),
        _code(
            "sh",
            "consul acl policy create -name agent-app1 -rules @agent-app1.hcl\n"
            'consul acl token create -description "agent app1" -policy-name agent-app1',
        ),
        "and one per service (and one for the Hazelcast members, as `hazelcast`), e.g. "
        "`service-logging-service.hcl`:\n",
        _code("hcl", render("acl-service-policy.hcl.tmpl", service="logging-service")),
        _code(
            "sh",
            "consul acl policy create -name service-logging-service -rules @service-logging-service.hcl\n"
            'consul acl token create -description "logging-service on app1" '
            "-policy-name service-logging-service",
        ),
        f"Each program gets its token in its own file, `{LAYOUT.token_dir}/<program>.token` (`hazelcast`, "
        "`logging`, `messages`, `facade`), named by `CONSUL_HTTP_TOKEN_FILE` (see the programs below). The "
        "member's service definition in `hazelcast.json` takes the hazelcast token as its `token` field, so the "
        "agent may register it. The service policy reads the local agent (`agent_prefix`): a service asks it how many "
        "nodes its cluster has and its own address, to warn when it registered a loopback address (in its log "
        "and `/health`); py-consul sends no token on those two calls, so servicekit sends it itself.\n",
        "## TLS for Consul (auto_encrypt)\n",
        "Make a CA and one certificate for the servers, naming each server's address (so that a client of the "
        "HTTPS API can check it), on one machine, with a umask that keeps the keys 0600 from the start:\n",
        _code(
            "sh",
            "umask 077\nconsul tls ca create\nconsul tls "
            + " ".join(host_config.server_cert_command(SERVERS.values())),
        ),
        f"Copy `consul-agent-ca.pem` to every host and the server certificate and key to the servers, into "
        f"`{CONFIG_DIR}`, as the user `consul` reads them (`sudo install -m 0600 -o consul -g consul "
        f"dc1-server-consul-0-key.pem {CONFIG_DIR}/`, and the same for the others). Keep the CA's key "
        f"(`consul-agent-ca-key.pem`) off the hosts. Servers add (`{CONFIG_DIR}/tls.hcl`):\n",
        _code("hcl", configs["server-tls.hcl"]),
        "Client agents get their certificates from the servers (`auto_encrypt`, naming the host's address) and add:\n",
        _code("hcl", configs["client-tls.hcl"]),
        "## The processes of a host\n",
        "One supervisord per host (`supervisord.conf`, the programs of app1 below, each with its `user=`); on a "
        "Consul server only the `consul` program. supervisord starts them in `priority` order: the agent, then "
        "the member, then nginx and the services. No start waits for the one before it to be ready, and none "
        "needs to: a member reads its settings from Consul with retries, and a service boots without Consul or "
        "the cluster and answers 503 on `/health` (so Consul does not route to it) until it has both. "
        "`./scripts/up` and `./scripts/hosts up` rely on the same, and wait for every instance to pass in Consul "
        "rather than for each start.\n",
        "A program that dies unexpectedly (killed, or an exit code other than 0) is started again at once "
        "(`autorestart=unexpected`); one that dies within `startsecs` of its start failed its start (a taken "
        "port: gunicorn tries it 5 times, a second apart) and is tried again after 1 s, 2 s... up to "
        "`startretries` times, then left `FATAL` until someone looks (`supervisorctl status`), a critical "
        "instance in Consul meanwhile. `supervisorctl stop` stops a program for good. Measured on the simulated "
        "hosts: docs/RELIABILITY.md, *Processes that come back*.\n",
        _code("ini", host_config.supervisor_config("app1", APPS["app1"], LAYOUT, app=True, autostart=True)),
        "### The same processes as systemd units\n",
        "Without supervisor: one unit per program (app1's below; a Consul server runs `messages-consul.service` "
        "only), rendered from `conf/hosts/program.service.tmpl` with the same commands and environment "
        "(`systemctl enable --now messages-consul messages-hazelcast messages-nginx messages-logging "
        "messages-messages messages-facade`). `After=`/`Wants=` order the starts as supervisord's priorities "
        "do, without waiting for readiness, for the reasons above. `Restart=on-failure` starts a program that "
        "died again after `RestartSec`; five failed starts in five minutes leave the unit failed. Each Consul "
        "token is a credential (`LoadCredential=`): systemd reads the 0600 file as root and hands the program "
        "a copy only it can read, at `$CREDENTIALS_DIRECTORY/consul-token`. tests/unit/test_deploy_doc.py runs "
        "`systemd-analyze verify` on every unit.\n",
        _code("ini", systemd_units_text()),
        "## The facade's front door\n",
        "nginx (Debian's package, `apt-get install nginx`; only its binary is used, not its service or "
        "`/etc/nginx`) listens on the facade's port, the one the facade registers in Consul, so Consul's check, "
        "the other hosts and the users all go through it. It reads each request whole before the facade's "
        "gunicorn sees it (a slow or half-open client holds no gunicorn thread), refuses what the facade would "
        "refuse (413, 431, 400) as JSON with an `X-Request-ID`, and passes the rest, with the client's `Host`, "
        "to the facade's gunicorn on `127.0.0.1` at `APP_PORT`. The `nginx` program above runs `python -m "
        "stackctl front-door`, which writes this configuration (app1's) into "
        f"`{LAYOUT.nginx_dir}/nginx.conf` from `conf/nginx.conf.tmpl` and then runs nginx as `messages`, in "
        "the foreground:\n",
        _code("nginx", front_door_config()),
        "## Each service's environment\n",
        _environment_table(),
        "Each service (the facade's nginx for the facade) also listens on `127.0.0.1` at its port when "
        "`SERVICE_HOST` is another address, so tools on the host reach it there "
        "(`curl -s http://127.0.0.1:8080/facade`); Consul and the other hosts use the registered address only.\n",
        "A facade reached by a DNS name, or through a load balancer that passes the client's `Host` header on, "
        "serves a request only under a name in `ALLOWED_HOSTS` (comma-separated; by default `localhost`, "
        "`127.0.0.1` and `::1`, plus the bind address): add that name, e.g. "
        "`ALLOWED_HOSTS=messages.example.com,localhost,127.0.0.1`, or every request through it gets "
        "421 Misdirected Request (the guard against DNS rebinding).\n",
        "The simulation adds `HAZELCAST_HEAP` (256m members, to fit one machine), `LOG_CAPACITY_BYTES` "
        "(the log's capacity for that heap), `HAZELCAST_MERGE_DELAY_SECONDS=10` (a healed member merges back "
        "within a test) and `PYTHONPATH` (the checkout); on real hosts leave them to their defaults "
        "(conf/stack.env, and Hazelcast's merge delays: 300 s after a member starts, then every 120 s).\n",
        "## A rolling upgrade\n",
        "One application host at a time, so that the others serve every request meanwhile "
        "(`./scripts/hosts upgrade [--to REF]` does the same on the simulated hosts; tests/integration/"
        "test_hosts.py runs it under load and counts the failed requests: docs/RELIABILITY.md, *A rolling "
        "upgrade*). On the host, with a token that may write its services (the management token, or one with "
        "`service:write` on them):\n",
        _code(
            "sh",
            "# 1. Out of every rotation: Consul maintenance mode for each instance of the host.\n"
            "for id in logging-service-app1-8081 messages-service-app1-8084 facade-service-app1-8080; do\n"
            '  consul maint -enable -service="$id" -reason="upgrade to REF"\n'
            "done\n"
            "# 2. Until no facade routes to them: every other facade's /health lists the instances its worker\n"
            "#    would call (details.discovery); the watches drop a critical instance within milliseconds, and\n"
            "#    a client of this facade that a load balancer sent here before the drain is answered within\n"
            "#    the facade's deadline (5 s): wait that long.\n"
            "sleep 5\n"
            "# 3. Stop the services (each leaves Consul, its maintenance with it), upgrade, start them again.\n"
            "sudo supervisorctl stop facade logging messages\n"
            "sudo -u messages git -C /opt/messages fetch && sudo -u messages git -C /opt/messages checkout REF\n"
            "sudo /opt/messages/scripts/install\n"
            "sudo supervisorctl start logging messages facade\n"
            "# 4. Until every instance of the host passes again (an instance that was not stopped, and so kept its\n"
            "#    maintenance, is taken out of it by hand), then the next host.\n"
            "for id in logging-service-app1-8081 messages-service-app1-8084 facade-service-app1-8080; do\n"
            '  consul maint -disable -service="$id" 2>/dev/null\n'
            '  until curl -sf -H "X-Consul-Token: $CONSUL_HTTP_TOKEN" \\\n'
            '      "http://127.0.0.1:8500/v1/agent/health/service/id/$id?format=text" | grep -qx passing\n'
            "  do sleep 1; done\n"
            "done",
        ),
        "With systemd: `systemctl stop messages-facade messages-logging messages-messages`, then `start`. "
        "The members and the agents are not restarted: an upgrade that changes them goes one member at a time "
        "too, waiting after each for the cluster to be whole again (3 members in `hazelcast` passing).\n",
        "## Backups\n",
        "The simulated hosts keep the log in the members' memory (their PostgreSQL, with Patroni, is still to "
        "come): what follows is the single-host stack's, whose members write through to PostgreSQL "
        "(docs/OPERATIONS.md, *The log survives restarts*). A backup is taken while the stack runs, and restored "
        "into an empty database before any member starts: the members load the log and the queue as they start.\n",
        _code(
            "sh",
            "# One snapshot: every message acknowledged before it began, with the queue's items not consumed yet.\n"
            "./scripts/backup /var/backups/messages/$(date -u +%Y%m%dT%H%M%SZ).dump  # pg_dump, custom format, 0600\n"
            "# Into an empty stack: refused before anything starts while the stack runs or keeps its database.\n"
            "./scripts/down --purge\n"
            "./scripts/up --restore /var/backups/messages/20261208T021500Z.dump        # pg_restore, then up",
        ),
        "Messages consumed after the backup are consumed again after a restore: the queue goes back to the "
        "moment of the backup. The times for 1,000,000 messages are in docs/OPERATIONS.md (*Backups*).\n",
        "## Alerts\n",
        f"Prometheus rules in `{ALERT_RULES.relative_to(ROOT)}` (`rule_files:` in Prometheus' configuration), for "
        "the metrics scraped as docs/OPERATIONS.md's *Metrics* shows (job `services`). Each has a unit test "
        "(`promtool test rules`, tests/unit/prometheus/alerts_test.yml). `page` wakes someone; `ticket` waits "
        "for the day.\n",
        alerts_table(),
    ]
    return "\n".join(parts)


def systemd_units(layout: host_config.Layout = LAYOUT) -> dict[str, str]:
    """app1's programs as systemd units, by file name."""
    programs = host_config.host_programs("app1", APPS["app1"], layout, app=True)
    return {host_config.unit_name(p.name): host_config.systemd_unit(p, layout) for p in programs}


def systemd_units_text() -> str:
    return "\n".join(f"# /etc/systemd/system/{name}\n{unit}" for name, unit in systemd_units().items())


def alerts_table() -> str:
    """Every alert of conf/prometheus/alerts.yml: when it fires, how urgent, and what to do (its `action`)."""
    rules = [rule for group in yaml.safe_load(ALERT_RULES.read_text())["groups"] for rule in group["rules"]]
    rows = ["| Alert | Fires when | Severity | What to do |", "| --- | --- | --- | --- |"]
    for rule in rules:
        when = f"`{rule['expr']}`" + (f" for {rule['for']}" if "for" in rule else "")
        action = " ".join(rule["annotations"]["action"].split())
        rows.append(f"| `{rule['alert']}` | {when.replace('|', '&#124;')} | {rule['labels']['severity']} | {action} |")
    return "\n".join(rows) + "\n"


def main(check: bool = False) -> int:
    text = markdown()
    if check:
        if not DOC.exists() or DOC.read_text() != text:
            sys.stderr.write(f"{DOC} is not up to date with conf/hosts/: run ./scripts/hosts deploy-docs\n")
            return 1
        return 0
    DOC.write_text(text)
    sys.stdout.write(f"wrote {DOC}\n")
    return 0
