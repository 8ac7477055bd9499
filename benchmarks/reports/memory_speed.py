"""The memory_speed report: ratios, targets, tables, notes (prose in `templates/memory_speed.md`) and the plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import env, report
from benchmarks.common.env import fmt, mib
from benchmarks.reports.memory_speed_notes import analysis_notes
from benchmarks.reports.memory_speed_targets import evaluate_targets, find, markdown_table, module_table, write_plot

NAME = "memory_speed"


def worst_module(entries: list[dict[str, Any]], key: str, timed: bool = True) -> dict[str, Any]:
    """The sequential run's summary: the module with the highest peak, mean and sum of the module step times."""
    worst = max(range(len(entries)), key=lambda k: entries[k][key]["peak_bytes"])
    summary = dict(entries[worst][key])
    summary["peak_module"] = worst + 1
    for field in ("step_time_s", "step_cpu_time_s"):
        times = [entry[key].get(field) for entry in entries]
        known = timed and all(t is not None for t in times)
        summary[field] = round(statistics.mean(times), 4) if known else None
        summary[field[: -len("_s")] + "_sum_over_modules_s"] = round(sum(times), 4) if known else None
        summary[field[: -len("_s")] + "_per_module_s"] = times
    return summary


def interleaved_summary(batch_size: int, rounds: int, times: dict, ratios: dict) -> dict[str, Any]:
    return {
        "batch_size": batch_size,
        "rounds": rounds,
        "order": "rotated each round",
        "configs": {
            name: {
                "wall_s": [round(t, 3) for t in times[name]["wall"]],
                "cpu_s": [round(t, 3) for t in times[name]["cpu"]],
                "median_cpu_s": round(statistics.median(times[name]["cpu"]), 3),
                "median_wall_s": round(statistics.median(times[name]["wall"]), 3),
                "median_cpu_ratio_to_e2e": round(statistics.median(ratios[name]["cpu"]), 3),
                "median_wall_ratio_to_e2e": round(statistics.median(ratios[name]["wall"]), 3),
            }
            for name in times
        },
    }


def add_ratios(records: list[dict[str, Any]]) -> None:
    e2e = {r["batch_size"]: r for r in records if r["mode"] == "e2e"}
    for record in records:
        base = e2e.get(record["batch_size"])
        if base is None:
            continue
        record["ratio_to_e2e"] = round(record["peak_bytes"] / base["peak_bytes"], 3)
        for field, ratio in (("step_time_s", "time_ratio_to_e2e"), ("step_cpu_time_s", "cpu_time_ratio_to_e2e")):
            both = record.get(field) and base.get(field)
            record[ratio] = round(record[field] / base[field], 3) if both else None


def assemble(args, command: str, bench, validation: dict[str, Any], num_blocks: int) -> dict[str, Any]:
    add_ratios(bench.records)
    residuals = [r["residual_bytes"] for r in bench.records] + [
        entry[key]["residual_bytes"]
        for entry in bench.module_records
        for key in ("cached", "uncached")
        if key in entry
    ]
    return {
        "max_residual_bytes": max(residuals) if residuals else None,
        "command": command,
        "runtime_s": env.environment()["runtime_s"],
        "environment": env.environment(command),
        "settings": {
            "depth": args.depth,
            "num_blocks": num_blocks,
            "batch_sizes": args.batch_sizes,
            "ks": args.ks,
            "policies": args.policies,
            "tau": 10.0,
            "aux_head": "conv",
            "optimizer": "SGD(lr=0.01, momentum=0.9, weight_decay=5e-4); memory: momentum buffers created before "
            "tracing. Time: the trainers' SGD (optim='sgd', optim_args='momentum=0.9'), first step of a phase untimed",
            "timed_steps": args.timed,
            "min_sequential_samples": args.min_sequential_samples,
            "multilap_measured": args.multilap,
            "quick": args.quick,
            "timing": "TRGLTrainer.train() / transformers.Trainer.train(), StepTimes callback",
            "bytes_unit": "MiB = 2**20 bytes in the Markdown; bytes in the JSON",
        },
        "validation": validation,
        "cross_checks": bench.checks,
        "diagnostics": bench.diagnostics,
        "records": bench.records,
        "module_records": bench.module_records,
    }


def write_outputs(result: dict[str, Any], out_dir: Path, plot: bool = True) -> str:
    settings, env_info, records = result["settings"], result["environment"], result["records"]
    main_batch, timed = settings["batch_sizes"][0], settings["timed_steps"]
    result["targets"] = evaluate_targets(records, main_batch, settings["ks"], result.get("diagnostics"))
    out_dir = Path(out_dir)
    report.write_json(out_dir / f"{NAME}.json", result)
    pattern, linear = result["validation"]["allocation_pattern"], result["validation"]["linear_training_step"]
    sizes, shapes = linear["known_sizes_bytes"], linear["shapes"]
    lines = [
        report.text(
            NAME,
            "header",
            command=result["command"],
            runtime_min=result["runtime_s"] / 60,
            git=str(env_info["git_commit"])[:10],
            **{k: env_info[k] for k in ("date_utc", "torch", "transformers", "cpu", "torch_threads", "cpu_count")},
            load_start=env_info["load_average_at_start"][0],
            load_end=env_info["load_average_at_end"][0],
            depth=settings["depth"],
            num_blocks=settings["num_blocks"],
            max_residual=result["max_residual_bytes"],
            timed_e2e=timed["e2e"],
            timed_checkpointing=timed.get("checkpointing", timed.get("checkpointing_equal")),
            timed_parallel=timed["parallel"],
            timed_sequential=timed.get("sequential", timed.get("sequential_per_module")),
            min_sequential_samples=settings["min_sequential_samples"],
            pattern_peak=pattern["measured_peak_bytes"],
            pattern_residual=pattern["residual_bytes"],
            pattern_ok="OK" if pattern["ok"] else "FAILED",
            in_features=shapes["in_features"],
            out_features=shapes["out_features"],
            batch=shapes["batch"],
            x_bytes=sizes["x"],
            w_bytes=sizes["W"],
            bias_bytes=sizes["bias"],
            y_bytes=sizes["y"],
            expected_grads=linear["expected_grad_bytes"],
            measured_grads=linear["measured_grad_bytes"],
            expected_peak=linear["expected_step_peak_bytes"],
            measured_peak=linear["measured_step_peak_bytes"],
            second_peak=linear["second_step_peak_bytes"],
            linear_residual=linear["residual_bytes"],
            linear_ok="OK" if linear["ok"] else "FAILED",
        )
    ]
    for name, check in result["cross_checks"].items():
        lines.append(
            report.text(
                NAME,
                "cross_check",
                name=name,
                first=mib(check["first_traced_step_peak_bytes"]),
                steady=mib(check["steady_state_step_peak_bytes"]),
                saved=mib(check["saved_tensor_hooks_bytes"]),
                forward=mib(check["profiler_forward_peak_above_start_bytes"]),
                step=mib(check["profiler_step_peak_above_start_bytes"]),
                mallinfo=mib(check.get("mallinfo2_peak_above_start_bytes")),
            )
        )
    e2e = find(records, mode="e2e", batch_size=main_batch)
    weights = mib(e2e["breakdown_at_peak_bytes"]["weights_and_buffers"]) if e2e else None
    lines += [
        "",
        f"## Results, batch {main_batch}",
        "",
        markdown_table(records, main_batch),
        "",
        report.text(NAME, "results_note", weights=weights),
        "",
    ]
    for batch_size in settings["batch_sizes"][1:]:
        lines += [f"## Subset, batch {batch_size}", "", markdown_table(records, batch_size), ""]
    k_detail = 4 if 4 in settings["ks"] else settings["ks"][-1]
    detail = module_table(result["module_records"], main_batch, "balanced", k_detail)
    if detail:
        lines += [
            f"## Per module: sequential, balanced split, K = {k_detail}, batch {main_batch}",
            "",
            detail,
            "",
            report.text(NAME, "per_module_note"),
            "",
        ]
    labels = {
        "trgl": "TRGL as shipped (tau = 10): energy fused with the last batch norm, branch recomputed in backward",
        "vangl_use_transport_false": "library VanGL (`use_transport=False`): energies logged without a graph",
    }
    for name, diag in result.get("diagnostics", {}).items():
        if name.startswith("transport_term"):
            lines += [
                f"## Cost of the transport term (sequential, {diag['split_policy']}, K = {diag['K']}, module "
                f"{diag['module']}, batch {diag['batch_size']})",
                "",
                report.table(
                    ["variant", "peak MiB", "x E2E", "activations MiB"],
                    [
                        [
                            label,
                            fmt(mib(diag[key]["peak_bytes"]), 1),
                            fmt(diag[key]["ratio_to_e2e"], 3),
                            fmt(mib(diag[key]["activation_bytes"]), 1),
                        ]
                        for key, label in labels.items()
                        if diag.get(key)
                    ],
                ),
                "",
            ]
    for name, timing in result.get("diagnostics", {}).items():
        if name.startswith("interleaved_timing"):
            rows = [
                [
                    config,
                    fmt(v["median_cpu_s"]),
                    fmt(v["median_cpu_ratio_to_e2e"], 3),
                    fmt(v["median_wall_s"]),
                    fmt(v["median_wall_ratio_to_e2e"], 3),
                ]
                for config, v in timing["configs"].items()
            ]
            lines += [
                f"## Interleaved timing check (batch {timing['batch_size']}, {timing['rounds']} rounds, order "
                "rotated)",
                "",
                report.text(NAME, "interleaved_intro"),
                "",
                report.table(
                    ["configuration", "CPU s/step (median)", "CPU x E2E", "wall s/step (median)", "wall x E2E"], rows
                ),
                "",
            ]
    lines += [
        "## Targets",
        "",
        report.table(
            ["target", "met", "numbers"],
            [[t["target"], "yes" if t["met"] else "**no**", t["value"]] for t in result["targets"]],
        ),
        "",
    ]
    notes = analysis_notes(result)
    if notes:
        lines += ["## Why: reading the numbers", ""] + [f"- {note}" for note in notes] + [""]
    text = "\n".join(lines)
    report.write_atomically(out_dir / f"{NAME}.md", text)
    if plot:
        write_plot(records, main_batch, out_dir / f"{NAME}.png", settings["depth"])
    return text
