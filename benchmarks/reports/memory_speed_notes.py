"""Explanations of the memory_speed report computed from the measured numbers (prose: templates/memory_speed.md)."""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.common import report
from benchmarks.common.env import fmt, mib
from benchmarks.reports.memory_speed_targets import find, interleaved_head

NAME = "memory_speed"


def analysis_notes(result: dict[str, Any]) -> list[str]:
    """Explanations computed from the measured numbers (rendered under the targets)."""
    records, modules, settings = result["records"], result["module_records"], result["settings"]
    main_batch = settings["batch_sizes"][0]
    notes: list[str] = []
    e2e = find(records, mode="e2e", batch_size=main_batch)
    if e2e is None:
        return notes
    e2e_act = e2e["breakdown_at_peak_bytes"]["activations_and_temporaries"]
    trgl = [r for r in records if r.get("ratio_to_floor") is not None]
    if trgl:
        notes.append(report.text(NAME, "note_floors", worst=max(r["ratio_to_floor"] for r in trgl)))
    for name, diag in result.get("diagnostics", {}).items():
        if not name.startswith("transport_term"):
            continue
        entry = find(
            modules,
            batch_size=diag["batch_size"],
            policy=diag["split_policy"],
            K=diag["K"],
            lap=1,
            module=diag["module"],
        )
        shipped, vangl = diag["trgl"], diag["vangl_use_transport_false"]
        notes.append(
            report.text(
                NAME,
                "note_transport",
                policy=diag["split_policy"],
                K=diag["K"],
                module=diag["module"],
                blocks=f" ({entry['blocks']} blocks)" if entry else "",
                trgl_ratio=shipped["ratio_to_e2e"],
                vangl_ratio=vangl["ratio_to_e2e"],
                cost=mib(shipped["peak_bytes"] - vangl["peak_bytes"]),
                clone=f" ({mib(entry['transport_clone_bytes'])} MiB for this module)" if entry else "",
                perfect=(e2e["peak_bytes"] - e2e_act + e2e_act / diag["K"]) / e2e["peak_bytes"],
            )
        )
    for name, timing in result.get("diagnostics", {}).items():
        if not name.startswith("interleaved_timing"):
            continue
        configs, parts = timing["configs"], []
        for key in (k for k in configs if k.startswith("parallel_")):
            k = key.rsplit("K", 1)[1]
            ckpt = configs.get(f"checkpointing_equal_K{k}")
            if ckpt:
                wins = sum(p < c for p, c in zip(configs[key]["cpu_s"], ckpt["cpu_s"]))
                parts.append(
                    report.text(
                        NAME,
                        "note_interleaved_part",
                        k=k,
                        head=interleaved_head(key),
                        parallel=configs[key]["median_cpu_ratio_to_e2e"],
                        checkpointing=ckpt["median_cpu_ratio_to_e2e"],
                        wins=wins,
                        rounds=len(ckpt["cpu_s"]),
                    )
                )
        if parts:
            linear = any("linear_head" in key for key in configs)
            notes.append(
                report.text(
                    NAME,
                    "note_interleaved",
                    parts="; ".join(parts),
                    linear=" " + report.text(NAME, "note_interleaved_linear") if linear else "",
                )
            )
    pairs = []
    for policy in settings["policies"]:
        for k in settings["ks"]:
            par = find(records, mode="parallel", split_policy=policy, K=k, batch_size=main_batch)
            ckpt = find(records, mode="checkpointing", split_policy=policy, K=k, batch_size=main_batch)
            if par and ckpt:
                pairs.append((policy, k, par, ckpt))
    if pairs:
        less = [p for p in pairs if p[2]["peak_bytes"] <= p[3]["peak_bytes"]]
        faster = [
            p
            for p in pairs
            if p[2].get("step_cpu_time_s")
            and p[3].get("step_cpu_time_s")
            and p[2]["step_cpu_time_s"] < p[3]["step_cpu_time_s"]
        ]
        detail = "; ".join(
            f"{policy} K={k}: {p['ratio_to_e2e']}x vs {c['ratio_to_e2e']}x memory, "
            f"{fmt(p.get('cpu_time_ratio_to_e2e'))}x vs {fmt(c.get('cpu_time_ratio_to_e2e'))}x CPU time"
            for policy, k, p, c in pairs
        )
        notes.append(
            report.text(
                NAME, "note_checkpointing", less=len(less), faster=len(faster), pairs=len(pairs), detail=detail
            )
        )
    deltas, extra = [], []
    for m in modules:
        if m["batch_size"] != main_batch or m["lap"] != 1 or m["module"] == 1 or "uncached" not in m:
            continue
        cached, uncached = m["cached"].get("step_cpu_time_s"), m["uncached"].get("step_cpu_time_s")
        extra.append(m["uncached"]["peak_bytes"] - m["cached"]["peak_bytes"])
        if cached and uncached:
            deltas.append((m["K"], m["module"], uncached / cached))
    if deltas:
        by_k: dict[int, list[float]] = {}
        for k, _, ratio in deltas:
            by_k.setdefault(k, []).append(ratio)
        last = max(deltas, key=lambda d: (d[0], d[1]))
        notes.append(
            report.text(
                NAME,
                "note_prefix_cache",
                extra=f"{mib(min(extra))}" if min(extra) == max(extra) else f"{mib(min(extra))}..{mib(max(extra))}",
                batch_mib=mib(main_batch * 3 * 32 * 32 * 4),
                last_ratio=last[2],
                last_k=last[0],
                summary=", ".join(f"K={k}: {statistics.mean(v):.2f}x" for k, v in sorted(by_k.items())),
            )
        )
    for r in (r for r in records if r["mode"] == "multilap"):
        seq = find(records, mode="sequential", split_policy=r["split_policy"], K=r["K"], batch_size=r["batch_size"])
        if seq:
            same = "identical" if r["peak_bytes"] == seq["peak_bytes"] else "different"
            notes.append(
                report.text(
                    NAME,
                    "note_multilap",
                    policy=r["split_policy"],
                    K=r["K"],
                    lap2=mib(r["peak_bytes"]),
                    lap1=mib(seq["peak_bytes"]),
                    same=same,
                )
            )
    for batch_size in settings["batch_sizes"][1:]:
        diffs = []
        for r in records:
            twin = find(records, mode=r["mode"], split_policy=r["split_policy"], K=r["K"], batch_size=main_batch)
            if r["batch_size"] == batch_size and r["mode"] != "e2e" and twin and r.get("ratio_to_e2e") is not None:
                diffs.append(abs(r["ratio_to_e2e"] - twin["ratio_to_e2e"]))
        if diffs:
            notes.append(report.text(NAME, "note_batch", batch=batch_size, main=main_batch, diff=max(diffs)))
    return notes
