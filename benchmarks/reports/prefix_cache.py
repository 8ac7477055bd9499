"""The prefix-cache reports: speed (TRGL sequential with the cache in memory, on disk, without it, against end-to-end)
and host memory (peak RSS against the number of training examples, at a fixed cache budget).
The prose is in `templates/prefix_cache.md`."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import report
from benchmarks.common.env import MIB, fmt

NAME = "prefix_cache"

SPEED_TARGETS = {"memory/e2e": 1.10, "disk/memory": 1.15}
ARM_LABELS = {
    "e2e": "end-to-end (`Trainer`)",
    "memory": "TRGL, cache in memory",
    "disk": "TRGL, cache on disk",
    "none": "TRGL, no cache",
}


def load(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _parts(run: dict[str, Any]) -> dict[str, float]:
    """Where the wall time of one `train()` went (seconds)."""
    timers = {key: sum(values) for key, values in run["timers_s"].items()}
    train = timers.get("trainer_train", 0.0)
    steps = sum(run["step_wall_s"])
    build = timers.get("cache_build", 0.0)
    store = timers.get("cache_store_add", 0.0) + timers.get("cache_store_flush", 0.0)
    phase = timers.get("reset", 0.0) + timers.get("finish_phase", 0.0)
    return {
        "wall": run["wall_s"],
        "cache_build": build,
        "cache_forward": build - store,
        "cache_store": store,
        "steps": steps,
        "loop_overhead": train - steps,
        "cache_gather": timers.get("cache_gather", 0.0),
        "per_phase_overhead": phase,
        "save_progress": timers.get("save_progress", 0.0),
        "run_overhead": run["wall_s"] - build - train - phase,
    }


def speed_summary(result: dict[str, Any]) -> dict[str, Any]:
    """Medians per model and arm, ratios (per repetition, then the median; and of the medians), parts of the time."""
    out: dict[str, Any] = {}
    for spec in result["models"]:
        epochs = spec["epochs"]
        runs = [r for r in result["runs"] if r["model"] == spec["name"]]
        arms: dict[str, Any] = {}
        for arm in result["config"]["arms"]:
            mine = [r for r in runs if r["arm"] == arm]
            parts = [_parts(r) for r in mine]
            arms[arm] = {
                "wall_s": [r["wall_s"] for r in mine],
                "median_wall_s": _median([r["wall_s"] for r in mine]),
                "median_cpu_s": _median([r["cpu_s"] for r in mine]),
                "max_others_cpu_share": max((r["others_cpu_share"] for r in mine), default=None),
                "parts_s": {key: _median([p[key] for p in parts]) for key in (parts[0] if parts else {})},
                "cache_build_per_phase_s": [
                    _median(list(v)) for v in zip(*(r["timers_s"].get("cache_build", []) for r in mine))
                ],
            }
        ratios = {}
        for name, (top, bottom) in {
            "memory/e2e": ("memory", "e2e"),
            "disk/memory": ("disk", "memory"),
            "none/e2e": ("none", "e2e"),
            "disk/e2e": ("disk", "e2e"),
        }.items():
            if top not in arms or bottom not in arms or not (arms[top]["wall_s"] and arms[bottom]["wall_s"]):
                continue
            per_rep = [a / b for a, b in zip(arms[top]["wall_s"], arms[bottom]["wall_s"])]
            ratios[name] = {
                "per_repetition": [round(r, 3) for r in per_rep],
                "median_of_ratios": _median(per_rep),
                "ratio_of_medians": round(arms[top]["median_wall_s"] / arms[bottom]["median_wall_s"], 3),
                "target": SPEED_TARGETS.get(name),
            }
            if epochs != 4:  # the same parts, with the training loop scaled to 4 epochs
                scaled = [_scaled(arms[key]["parts_s"], 4 / epochs) for key in (top, bottom)]
                ratios[name]["projected_at_4_epochs"] = round(scaled[0] / scaled[1], 3)
        # Module 1's steps are the same work in every TRGL arm (it trains on the data): their spread = the noise floor.
        first = [r["step_wall_s"][0] for r in runs if r["arm"] != "e2e" and r["step_wall_s"]]
        noise = round((max(first) - min(first)) / statistics.median(first), 3) if len(first) > 1 else None
        out[spec["name"]] = {"arms": arms, "ratios": ratios, "module1_steps_s": first, "module1_spread": noise}
    return out


def _scaled(parts: dict[str, float], factor: float) -> float:
    loop = parts["steps"] + parts["loop_overhead"]
    return parts["wall"] + loop * (factor - 1)


def speed_markdown(result: dict[str, Any]) -> str:
    env, cfg = result["environment"], result["config"]
    quick = report.text(NAME, "speed_quick") if result["quick"] else ""
    lines = [
        report.text(NAME, "speed_header", **env, load_start=env["load_average_at_start"][0],
                    load_end=env["load_average_at_end"][0], quick=quick, data=result["data"],
                    batch_size=cfg["batch_size"], aux_head=cfg["aux_head"], reps=cfg["reps"],
                    busy_threshold=cfg["busy_threshold"], retries=cfg["retries"],
                    discarded=len(result["discarded_runs"])),
    ]  # fmt: skip
    for spec in result["models"]:
        summary = result["summary"][spec["name"]]
        arms, ratios = summary["arms"], summary["ratios"]
        e2e = arms.get("e2e", {}).get("median_wall_s")
        per_module = report.text(NAME, "per_module") if spec["K"] > 1 else ""
        lines += [
            "",
            report.text(NAME, "speed_model", name=spec["name"], epochs=spec["epochs"], per_module=per_module),
            "",
        ]
        rows = []
        for arm, values in arms.items():
            ratio = values["median_wall_s"] / e2e if e2e and values["median_wall_s"] else None
            rows.append(
                [
                    ARM_LABELS[arm],
                    fmt(values["median_wall_s"], 1),
                    ", ".join(f"{v:.1f}" for v in values["wall_s"]),
                    fmt(values["median_cpu_s"], 1),
                    fmt(ratio, 3),
                    fmt(values["max_others_cpu_share"]),
                ]
            )
        lines.append(
            report.table(
                ["arm", "wall s (median)", "wall s (runs)", "CPU s (median)", "x E2E", "others' CPU share (max)"], rows
            )
        )
        lines += [
            "",
            "| ratio (wall) | median of per-repetition ratios | per repetition | ratio of medians | target | met |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, value in ratios.items():
            target = value["target"]
            met = "–" if target is None else ("yes" if value["median_of_ratios"] <= target else "**no**")
            projected = value.get("projected_at_4_epochs")
            lines.append(
                f"| {name} | {value['median_of_ratios']:.3f} | "
                f"{', '.join(f'{r:.3f}' for r in value['per_repetition'])} | {value['ratio_of_medians']:.3f}"
                f"{f' (at 4 epochs: {projected:.3f})' if projected else ''} | {fmt(target)} | {met} |"
            )
        if summary.get("module1_spread") is not None:
            steps = summary["module1_steps_s"]
            lines += ["", report.text(NAME, "speed_noise", low=min(steps), high=max(steps), runs=len(steps),
                                      spread=summary["module1_spread"])]  # fmt: skip
        lines += ["", report.text(NAME, "speed_parts_intro"), ""]
        keys = [
            "wall",
            "steps",
            "loop_overhead",
            "cache_gather",
            "cache_build",
            "cache_forward",
            "cache_store",
            "per_phase_overhead",
            "save_progress",
            "run_overhead",
        ]
        lines.append(
            report.table(
                ["part", *[ARM_LABELS[a] for a in arms]],
                [[key, *[fmt(arms[a]["parts_s"].get(key), 1) for a in arms]] for key in keys],
            )
        )
        per_phase = {a: v["cache_build_per_phase_s"] for a, v in arms.items() if v["cache_build_per_phase_s"]}
        if per_phase:
            lines += ["", report.text(NAME, "speed_cache_intro"), ""]
            lines.append(
                report.table(
                    ["arm", *[f"phase {i + 2}" for i in range(len(next(iter(per_phase.values()))))]],
                    [[ARM_LABELS[a], *[fmt(t, 2) for t in v]] for a, v in per_phase.items()],
                )
            )
    lines += ["", report.text(NAME, "speed_parts")]
    return "\n".join(lines) + "\n"


def write_speed(result: dict[str, Any], out_dir: Path) -> str:
    result["summary"] = speed_summary(result)
    text = speed_markdown(result)
    report.write_json(Path(out_dir) / "prefix_cache_speed.json", result)
    report.write_atomically(Path(out_dir) / "prefix_cache_speed.md", text)
    return text


# ---------------------------------------------------------------------------- memory

MEMORY_COLUMNS = ["examples", "estimated cache MiB (per phase)", "storage", "anonymous cost MiB",
                  "anonymous cost / largest cache", "file-backed cost MiB", "peak RSS cost MiB",
                  "peak RSS MiB (cache / never)"]  # fmt: skip


def _lowest(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The repeats of one point and arm merged: the lowest value of each measure (allocator noise only adds). Rises
    are from the start of `train()` to the sampled peak (import and model-building differences cancel out)."""
    rise = {key: min(p["sampled_peak_bytes"][key] - p["before_train_bytes"][key] for p in points) / MIB
            for key in ("RssAnon", "RssFile")}  # fmt: skip
    return {"caches": points[0]["caches"], "rise": rise, "hwm": min(p["vm_hwm_bytes"] for p in points) / MIB}


def memory_summary(result: dict[str, Any]) -> dict[str, Any]:
    """Per model and size: the cache's own cost (cached run minus uncached run) in anonymous memory, file-backed
    pages and peak RSS; whether the anonymous cost is flat above the budget."""
    from trgl_hf.training.prefix_cache import parse_bytes

    budget = parse_bytes(result["config"]["budget"]) / MIB
    out: dict[str, Any] = {"budget_mib": budget}
    for name, sizes in result["config"]["sizes"].items():
        rows = []
        for size in sizes:
            cached, never = (_lowest([p for p in result["points"] if (p["model"], p["rows"], p["arm"]) == key])
                             for key in ((name, size, "cache"), (name, size, "never")))  # fmt: skip
            largest = max((c["estimate_mib"] for c in cached["caches"]), default=0.0)
            anon = round(cached["rise"]["RssAnon"] - never["rise"]["RssAnon"], 1)
            rows.append({
                "rows": size,
                "estimates_mib": [c["estimate_mib"] for c in cached["caches"]],
                "storage": ["memory" if c["fits"] == "within" else "disk" for c in cached["caches"]],
                "anon_cost_mib": anon,
                "anon_cost_x_largest_cache": round(anon / largest, 2) if largest else None,
                "file_cost_mib": round(cached["rise"]["RssFile"] - never["rise"]["RssFile"], 1),
                "rss_cost_mib": round(cached["hwm"] - never["hwm"], 1),
                "peak_rss_mib": {"cache": round(cached["hwm"], 1), "never": round(never["hwm"], 1)},
            })  # fmt: skip
        over = [r["anon_cost_mib"] for r in rows if max(r["estimates_mib"], default=0) > budget]
        largest_row = max(rows, key=lambda r: r["rows"])
        check: dict[str, Any] = {"largest_cache_x_budget": round(max(largest_row["estimates_mib"]) / budget, 1)}
        if over:
            check.update({
                "over_budget_anon_cost_mib": [min(over), max(over)],
                "spread_mib": round(max(over) - min(over), 1),
                "flat": max(over) - min(over) <= 0.1 * budget,
                "max_anon_cost_minus_1.1_budget_mib": round(max(r["anon_cost_mib"] for r in rows) - 1.1 * budget, 1),
            })  # fmt: skip
        out[name] = {"rows": rows, "check": check}
    return out


def memory_markdown(result: dict[str, Any]) -> str:
    env, cfg, summary = result["environment"], result["config"], result["summary"]
    budget = summary["budget_mib"]
    datasets_notes = "; ".join(f"{name}: {info['note']}" for name, info in result["data"].items())
    lines = [
        report.text(NAME, "memory_header", **env, quick=report.text(NAME, "memory_quick") if result["quick"] else "",
                    steps_per_module=cfg["steps_per_module"], batch_size=cfg["batch_size"], budget=cfg["budget"],
                    budget_mib=budget, repeats=cfg["repeats"], datasets_notes=datasets_notes),
    ]  # fmt: skip
    for name, model in cfg["models"].items():
        part, check = summary[name], summary[name]["check"]
        title = report.text(NAME, "memory_gpt2") if name == "gpt2" else report.text(NAME, "memory_resnet", **model)
        rows = [[r["rows"], " + ".join(f"{e:.1f}" for e in r["estimates_mib"]), "/".join(r["storage"]),
                 fmt(r["anon_cost_mib"], 1), fmt(r["anon_cost_x_largest_cache"]), fmt(r["file_cost_mib"], 1),
                 fmt(r["rss_cost_mib"], 1), f"{r['peak_rss_mib']['cache']:.0f} / {r['peak_rss_mib']['never']:.0f}"]
                for r in part["rows"]]  # fmt: skip
        lines += ["", f"## {title}", "", report.table(MEMORY_COLUMNS, rows)]
        if "flat" in check:
            low, high = check["over_budget_anon_cost_mib"]
            lines += ["", report.text(NAME, "memory_check", largest=check["largest_cache_x_budget"],
                                      verdict="met" if check["flat"] else "**not met**", low=low, high=high,
                                      spread=check["spread_mib"],
                                      excess=check["max_anon_cost_minus_1.1_budget_mib"])]  # fmt: skip
    return "\n".join(lines) + "\n"


def memory_plot(result: dict[str, Any], path: Path) -> None:
    plt = report.pyplot()
    names = list(result["config"]["sizes"])
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2), squeeze=False)
    budget = result["summary"]["budget_mib"]
    for ax, name in zip(axes[0], names):
        rows = result["summary"][name]["rows"]
        x = [r["rows"] for r in rows]
        ax.plot(x, [r["anon_cost_mib"] for r in rows], "-o", label="anonymous cost")
        ax.plot(x, [r["rss_cost_mib"] for r in rows], "--s", label="peak RSS cost (VmHWM)")
        ax.plot(x, [r["file_cost_mib"] for r in rows], ":^", label="file-backed cost")
        ax.plot(x, [max(r["estimates_mib"]) for r in rows], color="grey", alpha=0.5, label="largest cache (estimate)")
        ax.axhline(budget, color="black", linewidth=0.8, label=f"budget ({budget:g} MiB)")
        ax.axhline(1.1 * budget, color="black", linewidth=0.8, linestyle=":", label="budget + 10%")
        ax.set(xscale="log", xlabel="training examples", ylabel="MiB (cached run - uncached run)", title=name)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Prefix cache: memory cost against dataset size, budget {result['config']['budget']}")
    report.save_figure(fig, path)


def write_memory(result: dict[str, Any], out_dir: Path, plot: bool = True) -> str:
    result["summary"] = memory_summary(result)
    text = memory_markdown(result)
    report.write_json(Path(out_dir) / "prefix_cache_memory.json", result)
    report.write_atomically(Path(out_dir) / "prefix_cache_memory.md", text)
    if plot:
        memory_plot(result, Path(out_dir) / "prefix_cache_memory.png")
    return text
