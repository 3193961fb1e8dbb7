"""What ./scripts/bench writes: the machine it ran on, a Markdown table and a plot."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from devstack import replace_block  # noqa: E402


def machine(command: str, plan: dict, seconds: float) -> dict:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M)
        model = found.group(1) if found else ""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "command": command.strip(),
        "load_generator": "wrk (Debian package), bounded by time; paced Python sender for POST-to-visible",
        "plan": plan,
        "seconds": round(seconds),
    }


def _fmt(value, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def markdown(r: dict) -> str:
    meta = r["meta"]
    base = r.get("baseline")
    head = "| figure | this checkout |" + (f" baseline ({meta.get('baseline_label', 'baseline')}) |" if base else "")
    rows = [
        f"Run {meta['date']} on {meta['cores']} cores ({meta['cpu'] or 'unknown CPU'}), Python {meta['python']}:",
        f"`{meta['command']}` ({meta['seconds']} s).",
        "",
        head,
        "|---|---|" + ("---|" if base else ""),
    ]

    def row(name: str, key: str, unit: str = "", digits: int = 0) -> None:
        line = f"| {name} | {_fmt(r.get(key), unit, digits)} |"
        if base:
            line += f" {_fmt(base.get(key), unit, digits)} |"
        rows.append(line)

    main_level = meta["plan"]["main_level"]
    row(f"POST /facade, requests/s at {main_level} connections (`post_rps`)", "post_rps")
    row("POST /facade p50", "post_p50_ms", " ms", 1)
    row("POST /facade p99", "post_p99_ms", " ms", 1)
    row("POST /facade / reference chain, same round (`post_vs_ref`)", "post_vs_ref", "", 2)
    row("POST /facade / the naive design, same round (`post_vs_design`)", "post_vs_design", "", 2)
    row("POST /facade written through to PostgreSQL / the same in memory only (`durable_vs_memory`)",
        "durable_vs_memory", "", 2)  # fmt: skip
    row("POST /facade with PostgreSQL's commit_delay (500 us), same stack (`post_rps_commit_delay`)",
        "post_rps_commit_delay")  # fmt: skip
    row("POST /facade without it, run just before (`post_rps_no_commit_delay`)", "post_rps_no_commit_delay")
    row("`./scripts/up` to every check passing, 1,000,000 messages stored (`reload_s_1m`)", "reload_s_1m", " s", 1)
    row("then to the first GET /facade page (`reload_first_page_s_1m`)", "reload_first_page_s_1m", " s", 2)
    row("`./scripts/backup` of those 1,000,000 messages (`backup_s_1m`)", "backup_s_1m", " s", 1)
    row("`./scripts/up --restore` of that backup into an empty stack, to every check passing (`restore_up_s_1m`)",
        "restore_up_s_1m", " s", 1)  # fmt: skip
    row("GET /facade p50 at 10,000 stored messages (`get_p50_ms_10k`)", "get_p50_ms_10k", " ms", 1)
    row("GET /facade growth, p50 per 1,000 stored messages", "get_ms_per_1k_messages", " ms", 2)
    row("GET /facade constant (p50 fit at 0 messages)", "get_constant_ms", " ms", 1)
    row("GET /facade?limit=100 p50 at 1,000 stored (`get_page_p50_ms_1k`)", "get_page_p50_ms_1k", " ms", 1)
    row("GET /facade?limit=100 p50 at 1,000,000 stored (`get_page_p50_ms_1m`)", "get_page_p50_ms_1m", " ms", 1)
    row("GET /facade?limit=100 p50, 1,000,000 / 1,000 stored (`get_page_growth`)", "get_page_growth", "", 2)
    row("POST-to-visible p50 at 200 messages/s", "visible_p50_ms", " ms", 1)
    row("POST-to-visible p99 at 200 messages/s (`visible_p99_ms`)", "visible_p99_ms", " ms", 1)
    row("Drain rate, 2 consumers (`drain_msgs_per_s`)", "drain_msgs_per_s", " msg/s")
    row("Consul HTTP requests per 1,000 facade requests (`consul_requests_per_1k`)", "consul_requests_per_1k", "", 2)
    row("Requests the facade's /metrics counted per request wrk sent (`metrics_counted_per_sent`)",
        "metrics_counted_per_sent", "", 3)  # fmt: skip
    if "ref_chain_rps" in r:
        rows += [
            "",
            "| reference, same run | requests/s |",
            "|---|---|",
            f"| bare Flask endpoint (`ref_bare_rps`) | {_fmt(r.get('ref_bare_rps'))} |",
            f"| two-hop chain (`ref_chain_rps`) | {_fmt(r.get('ref_chain_rps'))} |",
            f"| the naive design (`ref_design_rps`) | {_fmt(r.get('ref_design_rps'))} |",
        ]
    if "get_by_size" in r:
        rows += [
            "",
            "| stored messages | GET p50 | GET p99 |" + (" baseline p50 | baseline p99 |" if base else ""),
            "|---|---|---|" + ("---|---|" if base else ""),
        ]
        for size, g in r["get_by_size"].items():
            line = f"| {int(size):,} | {g['p50_ms']:.1f} ms | {g['p99_ms']:.1f} ms |"
            if base and "get_by_size" in base:
                b = base["get_by_size"][size]
                line += f" {b['p50_ms']:.1f} ms | {b['p99_ms']:.1f} ms |"
            rows.append(line)
    if "page_by_size" in r:
        rows += ["", "| stored messages | GET ?limit=100 p50 | p99 |", "|---|---|---|"]
        for size, g in r["page_by_size"].items():
            rows.append(f"| {int(size):,} | {g['p50_ms']:.1f} ms | {g['p99_ms']:.1f} ms |")
    if "post_by_level" in r:
        rows += [
            "",
            "| connections | POST /facade | p50 | p99 | chain | chain p99 |"
            + (" baseline | baseline p99 |" if base else ""),
            "|---|---|---|---|---|---|" + ("---|---|" if base else ""),
        ]
        for level, p in r["post_by_level"].items():
            c = r["chain_by_level"][level]
            line = (
                f"| {level} | {p['rps']:,.0f}/s | {p['p50_ms']:.1f} ms | {p['p99_ms']:.1f} ms | "
                f"{c['rps']:,.0f}/s | {c['p99_ms']:.1f} ms |"
            )
            if base and "post_by_level" in base:
                b = base["post_by_level"][level]
                line += f" {b['rps']:,.0f}/s | {b['p99_ms']:.1f} ms |"
            rows.append(line)
    if "slow_instance" in r:
        b = r["slow_instance"]
        rows += [
            "",
            f"| one logging instance {b['delay_ms']} ms slower, POST /facade at {b['connections']} connections "
            "| p50 | p90 | p99 | requests/s | calls to the slow instance |",
            "|---|---|---|---|---|---|",
        ]
        for policy in ("random", "p2c"):
            rows.append(
                f"| `LB_POLICY={policy}` | {b[policy + '_p50_ms']:.1f} ms | {b[policy + '_p90_ms']:.1f} ms "
                f"| {b[policy + '_p99_ms']:.1f} ms | {b[policy + '_rps']:,.0f}/s | {b[policy + '_slow_share']:.0%} |"
            )
    if r.get("memory"):
        m = r["memory"]
        rows += [
            "",
            f"| POST /facade at {main_level} connections, same rounds | requests/s | p50 | p99 |",
            "|---|---|---|---|",
            f"| written through to PostgreSQL | {_fmt(r.get('post_rps'))} | {_fmt(r.get('post_p50_ms'), ' ms', 1)} "
            f"| {_fmt(r.get('post_p99_ms'), ' ms', 1)} |",
            f"| in memory only (the store switched off) | {_fmt(m.get('post_rps'))} "
            f"| {_fmt(m.get('post_p50_ms'), ' ms', 1)} | {_fmt(m.get('post_p99_ms'), ' ms', 1)} |",
        ]
    if r.get("pg_stat_statements"):
        rows += ["", "| PostgreSQL over the POST phase (pg_stat_statements) | calls | total | mean |",
                 "|---|---|---|---|"]  # fmt: skip
        for st in r["pg_stat_statements"]:
            query = st["query"].replace("|", "\\|")
            rows.append(f"| `{query}` | {st['calls']:,} | {st['total_ms']:,.0f} ms | {st['mean_ms']:.3f} ms |")
    if "cpu_ms_per_request" in r:
        rows += ["", cpu_table(r["cpu_ms_per_request"], meta)]
    if "profile" in r:
        rows += ["", profile_table(r["profile"], meta)]
    return "\n".join(rows)


def profile_table(found: dict, meta: dict) -> str:
    """py-spy --gil shares, one column per service and load."""
    columns = [(load, service) for load in ("POST", "GET") for service in ("facade", "logging_svc")]
    names = list(found["POST"]["facade"])
    rows = [
        f"Where the workers' Python CPU goes (py-spy --gil; POST at {meta['plan']['main_level']} connections, "
        f"GET at 1 connection with {found['stored']:,} stored), % of samples:",
        "",
        "| part | " + " | ".join(f"{service}, {load}" for load, service in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name in names:
        cells = [found[load][service][name] for load, service in columns]
        if name == "samples":
            rows.append("| samples | " + " | ".join(f"{c:,.0f}" for c in cells) + " |")
        else:
            rows.append(f"| {name.strip()} | " + " | ".join(f"{c:.0f}%" for c in cells) + " |")
    return "\n".join(rows)


def cpu_table(cpu: dict[str, dict[str, float]], meta: dict) -> str:
    """CPU per POST by component, and the throughput that CPU allows when every core is busy."""
    targets = list(cpu)
    names = list(dict.fromkeys(name for spent in cpu.values() for name in spent))
    rows = [
        f"CPU per POST at {meta['plan']['main_level']} connections, ms, measured around the same runs:",
        "",
        "| component | " + " | ".join(targets) + " |",
        "|---|" + "---|" * len(targets),
    ]
    for name in names:
        rows.append(f"| {name} | " + " | ".join(_fmt(cpu[t].get(name), "", 2) for t in targets) + " |")
    totals = {t: sum(cpu[t].values()) for t in targets}
    rows.append("| **total** | " + " | ".join(f"**{totals[t]:.2f}**" for t in targets) + " |")
    cores = meta["cores"] or 1
    rows.append(
        f"| ceiling on {cores} busy cores, requests/s | "
        + " | ".join(f"{cores * 1000 / totals[t]:,.0f}" if totals[t] else "-" for t in targets)
        + " |"
    )
    return "\n".join(rows)


def plot(r: dict, path: Path) -> None:
    fig, (get_ax, post_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = [("this checkout", r)] + ([("baseline", r["baseline"])] if r.get("baseline") else [])
    for label, data in series:
        if "get_by_size" in data:
            sizes = [int(n) for n in data["get_by_size"]]
            get_ax.plot(sizes, [g["p50_ms"] for g in data["get_by_size"].values()], "o-", label=f"{label} p50")
            get_ax.plot(sizes, [g["p99_ms"] for g in data["get_by_size"].values()], "o--", label=f"{label} p99")
        if "post_by_level" in data:
            levels = data["post_by_level"].values()
            post_ax.plot([p["rps"] for p in levels], [p["p50_ms"] for p in levels], "o-", label=f"{label} p50")
            post_ax.plot([p["rps"] for p in levels], [p["p99_ms"] for p in levels], "o--", label=f"{label} p99")
    if "chain_by_level" in r:
        levels = r["chain_by_level"].values()
        post_ax.plot([p["rps"] for p in levels], [p["p50_ms"] for p in levels], "s:", label="reference chain p50")
    get_ax.set(title="GET /facade latency by stored messages", xlabel="stored messages", ylabel="ms")
    post_ax.set(title="POST /facade latency by load (1, 4, 16... connections)", xlabel="requests/s", ylabel="ms")
    for ax in (get_ax, post_ax):
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
    fig.suptitle(f"{r['meta']['date']}, {r['meta']['cores']} cores: {r['meta']['command']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def page_plot(r: dict, path: Path) -> bool:
    """GET /facade?limit=100 against the stored messages, 1,000 to 1,000,000; False when not measured."""
    if "page_by_size" not in r:
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    sizes = [int(n) for n in r["page_by_size"]]
    ax.plot(sizes, [g["p50_ms"] for g in r["page_by_size"].values()], "o-", label="p50")
    ax.plot(sizes, [g["p99_ms"] for g in r["page_by_size"].values()], "o--", label="p99")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set(title="GET /facade?limit=100 (first page) by stored messages", xlabel="stored messages", ylabel="ms")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"{r['meta']['date']}, {r['meta']['cores']} cores: {r['meta']['command']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_docs(table: str, doc: Path, plot_from: Path, plot_to: Path) -> None:
    """Replace the results block of docs/BENCHMARKS.md; the prose around it is written by hand."""
    replace_block(doc, "bench:results", f"{table}\n\n![GET and POST latency](bench.png)")
    shutil.copyfile(plot_from, plot_to)
