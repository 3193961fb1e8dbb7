"""The keys of bench-results.json, from what the phases kept: medians over rounds, the GET growth fit."""

from __future__ import annotations

import statistics

from bench.phases import Plan
from bench.systems import System


def summarize(plan: Plan, systems: list[System], post: dict) -> dict:
    runs = post.get("runs", {})

    def med(label: str, level: int, attr: str) -> float | None:
        results = runs.get(label, {}).get(level)
        return statistics.median(getattr(r, attr) for r in results) if results else None

    def by_level(label: str) -> dict:
        return {lvl: {attr: med(label, lvl, attr) for attr in ("rps", "p50_ms", "p99_ms")} for lvl in plan.levels}

    out: dict = {}
    for system in systems:
        s: dict = {}
        if runs:
            s["post_rps"] = med(system.label, plan.main_level, "rps")
            s["post_p50_ms"] = med(system.label, plan.main_level, "p50_ms")
            s["post_p99_ms"] = med(system.label, plan.main_level, "p99_ms")
            s["post_vs_ref"] = statistics.median(post["ratios"][system.label])
            s["post_vs_design"] = statistics.median(post["design_ratios"][system.label])
            s["post_errors"] = sum(r.errors for rs in runs[system.label].values() for r in rs)
            s["post_by_level"] = by_level(system.label)
        if "get" in system.results:
            get = system.results["get"]
            s["get_by_size"] = {n: {"p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "rps": r.rps, "errors": r.errors}
                                for n, r in get.items()}  # fmt: skip
            s["get_p50_ms_10k"] = get[max(get)].p50_ms
            sizes = sorted(get)
            slope, intercept = statistics.linear_regression(sizes, [get[n].p50_ms for n in sizes])
            s["get_ms_per_1k_messages"] = slope * 1000
            s["get_constant_ms"] = intercept
        if "page" in system.results:
            page = system.results["page"]
            s["page_by_size"] = {n: {"p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "rps": r.rps, "errors": r.errors}
                                 for n, r in page.items()}  # fmt: skip
            if 1_000 in page and 1_000_000 in page:
                s["get_page_p50_ms_1k"] = page[1_000].p50_ms
                s["get_page_p50_ms_1m"] = page[1_000_000].p50_ms
                s["get_page_growth"] = page[1_000_000].p50_ms / page[1_000].p50_ms
        if "visible" in system.results:
            s["visible_p50_ms"] = system.results["visible"]["p50_ms"]
            s["visible_p99_ms"] = system.results["visible"]["p99_ms"]
            s["visible_rate"] = system.results["visible"]["rate"]
        if "drain" in system.results:
            s["drain_msgs_per_s"] = system.results["drain"]["msgs_per_s"]
        if "balance" in system.results:
            s["slow_instance"] = system.results["balance"]
        if system.facade_requests:
            s["consul_requests_per_1k"] = system.consul_requests * 1000 / system.facade_requests
            if system.facade_counted is not None:
                # wrk counts the answers it read; requests still in flight when a run stops are answered
                # and counted by the facade only, so this is 1 plus at most connections per run.
                s["metrics_counted_per_sent"] = system.facade_counted / system.facade_requests
        out[system.label] = s
    current = dict(out[systems[0].label])
    from bench.store import MEMORY_LABEL

    memory = out.pop(MEMORY_LABEL, None)
    systems = [s for s in systems if s.label != MEMORY_LABEL]
    if memory is not None and runs:
        current["memory"] = memory
        current["durable_vs_memory"] = current["post_rps"] / memory["post_rps"]
        current["pg_stat_statements"] = post.get("pg_stat_statements")
        current["member_profile"] = post.get("member_profile")
        current.update(post.get("commit_delay") or {})
    if "reload" in post:
        current.update(post["reload"])
    if runs:
        current["ref_chain_rps"] = med("chain", plan.main_level, "rps")
        current["ref_bare_rps"] = med("bare", plan.main_level, "rps")
        current["ref_design_rps"] = med("design", plan.main_level, "rps")
        current["chain_by_level"] = by_level("chain")
        current["cpu_ms_per_request"] = post["cpu_ms_per_request"]
    if len(systems) > 1:
        current["baseline"] = out[systems[1].label]
    return current
