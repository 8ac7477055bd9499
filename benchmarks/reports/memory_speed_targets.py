"""Targets (memory ratios, floors, parallel vs checkpointing, interleaved timing), tables and plot of memory_speed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import report
from benchmarks.common.env import fmt, mib


def find(records, **keys):
    return next((r for r in records if all(r.get(k) == v for k, v in keys.items())), None)


def _ratio_target_value(record: dict[str, Any], limit: float, e2e_peak: int | None) -> str:
    text = f"{record['ratio_to_e2e']:.3f}x ({mib(record['peak_bytes'])} MiB)"
    if e2e_peak and record["peak_bytes"] > limit * e2e_peak:
        over = record["peak_bytes"] - limit * e2e_peak
        text += f"; missed by {mib(over)} MiB (+{100 * over / (limit * e2e_peak):.0f} % over {limit}x = "
        text += f"{mib(limit * e2e_peak)} MiB)"
    elif e2e_peak:
        text += f"; limit {mib(limit * e2e_peak)} MiB"
    return text


def interleaved_head(config_name: str) -> str:
    return "linear heads" if "linear_head" in config_name else "conv heads"


def evaluate_targets(
    records: list[dict[str, Any]], main_batch: int, ks: list[int], diagnostics: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    targets = []
    interleaved = (diagnostics or {}).get(f"interleaved_timing_batch{main_batch}", {}).get("configs", {})
    for name, timing in interleaved.items():
        if name.startswith("parallel_"):
            ratio = timing["median_cpu_ratio_to_e2e"]
            targets.append(
                {
                    "target": f"parallel equal K={name.rsplit('K', 1)[1]} ({interleaved_head(name)}) <= 1.15x E2E "
                    "CPU time per step (interleaved check)",
                    "met": ratio <= 1.15,
                    "value": f"{ratio}x (median of {len(timing['cpu_s'])} rounds)",
                }
            )
    e2e_record = find(records, mode="e2e", batch_size=main_batch)
    e2e_peak = e2e_record["peak_bytes"] if e2e_record else None
    trgl_modes = ("parallel", "sequential", "sequential_no_cache", "multilap")
    trgl = [r for r in records if r["mode"] in trgl_modes and r.get("ratio_to_floor") is not None]
    if trgl:
        worst = max(trgl, key=lambda r: r["ratio_to_floor"])
        over = [r for r in trgl if r["ratio_to_floor"] > 1.25]
        targets.append(
            {
                "target": "every TRGL configuration within 1.25x of its floor",
                "met": not over,
                "value": f"max {worst['ratio_to_floor']:.3f}x ({worst['mode']}, {worst['split_policy']}, "
                f"K={worst['K']}, batch {worst['batch_size']}); {len(over)} of {len(trgl)} above 1.25x",
            }
        )
    for mode in ("sequential", "sequential_no_cache"):
        record = find(records, mode=mode, split_policy="balanced", K=4, batch_size=main_batch)
        if record:
            targets.append(
                {
                    "target": f"{mode.replace('_', ' ')} K=4 balanced <= 0.35x E2E (batch {main_batch})",
                    "met": record["ratio_to_e2e"] <= 0.35,
                    "value": _ratio_target_value(record, 0.35, e2e_peak),
                }
            )
    for policy in ("equal", "balanced"):
        record = find(records, mode="parallel", split_policy=policy, K=16, batch_size=main_batch)
        if record:
            targets.append(
                {
                    "target": f"parallel K=16 {policy} <= 0.25x E2E (batch {main_batch})",
                    "met": record["ratio_to_e2e"] <= 0.25,
                    "value": _ratio_target_value(record, 0.25, e2e_peak),
                }
            )
    for k in ks:
        for policy, ck_policy in (("equal", "equal"), ("balanced", "balanced"), ("balanced", "equal")):
            par = find(records, mode="parallel", split_policy=policy, K=k, batch_size=main_batch)
            ckpt = find(records, mode="checkpointing", split_policy=ck_policy, K=k, batch_size=main_batch)
            if not (par and ckpt):
                continue
            memory_ok = par["peak_bytes"] <= ckpt["peak_bytes"]
            speed_ok = (
                par.get("step_cpu_time_s") is not None
                and ckpt.get("step_cpu_time_s") is not None
                and par["step_cpu_time_s"] < ckpt["step_cpu_time_s"]
            )
            speed_note = ""
            par_i, ckpt_i = (
                interleaved.get(f"parallel_{policy}_K{k}"),
                interleaved.get(f"checkpointing_{ck_policy}_K{k}"),
            )
            if par_i and ckpt_i:
                speed_ok = par_i["median_cpu_ratio_to_e2e"] < ckpt_i["median_cpu_ratio_to_e2e"]
                speed_note = (
                    f"; interleaved check: {par_i['median_cpu_ratio_to_e2e']}x vs "
                    f"{ckpt_i['median_cpu_ratio_to_e2e']}x E2E CPU time (used for the verdict)"
                )
            targets.append(
                {
                    "target": f"parallel {policy} K={k} <= memory of checkpointing ({ck_policy} segments) and "
                    "faster per step",
                    "met": memory_ok and speed_ok,
                    "value": f"memory {mib(par['peak_bytes'])} vs {mib(ckpt['peak_bytes'])} MiB "
                    f"({'ok' if memory_ok else 'more'}); CPU time {par.get('step_cpu_time_s')} vs "
                    f"{ckpt.get('step_cpu_time_s')} s/step ({'faster' if speed_ok else 'not faster'}; wall "
                    f"{par.get('step_time_s')} vs {ckpt.get('step_time_s')} s){speed_note}",
                }
            )
    return targets


MODE_LABEL = {
    "e2e": "E2E",
    "checkpointing": "E2E + checkpointing",
    "parallel": "TRGL parallel",
    "sequential": "TRGL sequential (cache)",
    "sequential_no_cache": "TRGL sequential (no cache)",
    "multilap": "TRGL multi-lap (lap 2)",
}
MODE_ORDER = list(MODE_LABEL)


def markdown_table(records: list[dict[str, Any]], batch_size: int) -> str:
    rows = [r for r in records if r["batch_size"] == batch_size]
    rows.sort(key=lambda r: (MODE_ORDER.index(r["mode"]), r["split_policy"] or "", r["K"]))
    lines = [
        "| mode | split | K | blocks per module | peak MiB | x E2E | floor MiB | x floor | activations MiB | "
        "grads MiB | peak at | CPU s/step | CPU x E2E | wall s/step | wall x E2E |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        breakdown = r["breakdown_at_peak_bytes"]
        where = r.get("peak_phase") or ""
        if r.get("peak_module"):
            where = f"module {r['peak_module']} {where}"
        split = "–" if r["split"] is None else ",".join(str(s) for s in r["split"])
        lines.append(
            f"| {MODE_LABEL[r['mode']]} | {r['split_policy'] or '–'} | {r['K'] if r['mode'] != 'e2e' else '–'} | "
            f"{split} | {fmt(mib(r['peak_bytes']), 1)} | {fmt(r.get('ratio_to_e2e'), 3)} | "
            f"{fmt(mib(r['floor_bytes']), 1)} | {fmt(r['ratio_to_floor'], 3)} | "
            f"{fmt(mib(breakdown['activations_and_temporaries']), 1)} | {fmt(mib(breakdown['gradients']), 2)} | "
            f"{where.strip()} | {fmt(r.get('step_cpu_time_s'), 2)} | {fmt(r.get('cpu_time_ratio_to_e2e'), 2)} | "
            f"{fmt(r.get('step_time_s'), 2)} | {fmt(r.get('time_ratio_to_e2e'), 2)} |"
        )
    return "\n".join(lines)


def module_table(module_records: list[dict[str, Any]], batch_size: int, policy: str, k: int) -> str:
    rows = [
        m
        for m in module_records
        if m["batch_size"] == batch_size and m["policy"] == policy and m["K"] == k and m["lap"] == 1
    ]
    if not rows:
        return ""
    lines = [
        "| module | blocks | input MiB | activations MiB (isolated fwd+bwd) | branch outputs MiB (not kept) | "
        "peak MiB (cache) | peak MiB (no cache) | CPU s/step (cache) | CPU s/step (no cache) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in rows:
        lines.append(
            f"| {m['module']} | {m['blocks']} | {fmt(mib(m['input_bytes']), 1)} | "
            f"{fmt(mib(m['activation_bytes']), 1)} "
            f"| {fmt(mib(m.get('transport_clone_bytes')), 1)} | {fmt(mib(m['cached']['peak_bytes']), 1)} | "
            f"{fmt(mib(m['uncached']['peak_bytes']), 1)} | {fmt(m['cached']['step_cpu_time_s'], 3)} | "
            f"{fmt(m['uncached']['step_cpu_time_s'], 3)} |"
        )
    return "\n".join(lines)


def write_plot(records: list[dict[str, Any]], batch_size: int, path: Path, depth: int) -> None:
    plt = report.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    styles = {
        ("checkpointing", "equal"): ("tab:gray", "s", "--"),
        ("checkpointing", "balanced"): ("tab:gray", "s", ":"),
        ("parallel", "equal"): ("tab:blue", "o", "--"),
        ("parallel", "balanced"): ("tab:blue", "o", "-"),
        ("sequential", "equal"): ("tab:green", "^", "--"),
        ("sequential", "balanced"): ("tab:green", "^", "-"),
        ("sequential_no_cache", "equal"): ("tab:olive", "v", "--"),
        ("sequential_no_cache", "balanced"): ("tab:olive", "v", "-"),
        ("multilap", "equal"): ("tab:red", "x", "none"),
        ("multilap", "balanced"): ("tab:red", "x", "none"),
    }
    for (mode, policy), (color, marker, linestyle) in styles.items():
        rows = sorted(
            (
                r
                for r in records
                if r["batch_size"] == batch_size and r["mode"] == mode and r["split_policy"] == policy
            ),
            key=lambda r: r["K"],
        )
        if not rows:
            continue
        ax.plot(
            [r["K"] for r in rows],
            [r["ratio_to_e2e"] for r in rows],
            color=color,
            marker=marker,
            linestyle=linestyle,
            markersize=8 if mode == "multilap" else 6,
            label=f"{MODE_LABEL[mode]}, {policy}",
        )
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.text(2, 1.01, "E2E", va="bottom", fontsize=8)
    ax.plot([4], [0.35], marker="_", color="tab:green", markersize=22, markeredgewidth=2)
    ax.annotate("target seq. K=4 ≤ 0.35", (4, 0.35), textcoords="offset points", xytext=(8, 4), fontsize=8)
    ax.plot([16], [0.25], marker="_", color="tab:blue", markersize=22, markeredgewidth=2)
    ax.annotate("target par. K=16 ≤ 0.25", (16, 0.25), textcoords="offset points", xytext=(-120, 6), fontsize=8)
    ax.set_xscale("log", base=2)
    ks = sorted({r["K"] for r in records if r["mode"] != "e2e"})
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_ylim(0, None)
    ax.set_xlabel("K (modules / checkpoint segments)")
    ax.set_ylabel("peak training memory / end-to-end")
    ax.set_title(f"CIFAR ResNet-{depth}, batch {batch_size}, SGD momentum, CPU allocator trace")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    report.save_figure(fig, path, dpi=130)
