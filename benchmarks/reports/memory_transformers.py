"""The memory_transformers report: ratios, tables, the computed statements and the Markdown (prose in
`templates/memory_transformers.md`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.common import env, report
from benchmarks.common.env import fmt, mib

NAME = "memory_transformers"


def assemble(args, command, bench, validation, specs, ks, skipped, commit_at_start, adamw) -> dict[str, Any]:
    add_ratios(bench.records)
    residuals = [r["residual_bytes"] for r in bench.records] + [m["residual_bytes"] for m in bench.module_records]
    environment = env.environment(command)
    return {
        "command": command,
        "runtime_s": environment["runtime_s"],
        "environment": {**environment, "git_commit_at_start": commit_at_start},
        "settings": {
            "models": args.models,
            "model_specs": specs,
            "ks": ks,
            "tau": 10.0,
            "split_policy": "equal",
            "optimizer": f"AdamW({adamw}), state created by an untraced warm-up step before the traced step",
            "timed_steps": args.timed,
            "threads": args.threads,
            "quick": args.quick,
            "timing": "TRGLTrainer.train() / transformers.Trainer.train(), StepTimes callback, AdamW (adamw_torch)",
            "bytes_unit": "MiB = 2**20 bytes in the Markdown; bytes in the JSON",
        },
        "max_residual_bytes": max(residuals) if residuals else None,
        "validation": validation,
        "notes": bench.notes,
        "skipped": skipped,
        "records": bench.records,
        "module_records": bench.module_records,
    }


def add_ratios(records: list[dict[str, Any]]) -> None:
    e2e = {r["model"]: r for r in records if r["mode"] == "e2e"}
    for record in records:
        base = e2e.get(record["model"])
        if base is None:
            continue
        record["ratio_to_e2e"] = round(record["peak_bytes"] / base["peak_bytes"], 3)
        for field, ratio, reference in (
            ("step_cpu_s", "cpu_ratio_to_e2e", base["step_cpu_s"]),
            ("step_wall_s", "wall_ratio_to_e2e", base["step_wall_s"]),
            ("step_cpu_sum_over_modules_s", "cpu_sum_over_modules_ratio_to_e2e", base["step_cpu_s"]),
        ):
            value = record.get(field)
            record[ratio] = round(value / reference, 3) if value and reference else None


MODE_LABEL = {
    "e2e": "E2E",
    "checkpointing": "E2E + gradient checkpointing",
    "parallel": "TRGL parallel",
    "sequential": "TRGL sequential (prefix cache)",
}


def find(records, **keys):
    return next((r for r in records if all(r.get(k) == v for k, v in keys.items())), None)


def results_table(records: list[dict[str, Any]], name: str) -> str:
    rows = [r for r in records if r["model"] == name]
    rows.sort(key=lambda r: (list(MODE_LABEL).index(r["mode"]), r["K"] or 0))
    lines = [
        "| mode | K | layers per module | peak MiB | x E2E | weights MiB | AdamW state MiB | gradients MiB (at peak) "
        "| activations + temporaries MiB (at peak) | inputs MiB | peak at | CPU s/step | CPU x E2E | "
        "wall s/step |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        b = r["breakdown_at_peak_bytes"]
        where = r.get("peak_phase") or ""
        if r["mode"] == "sequential":
            where = f"module {r['peak_module']}'s step ({where.replace('_', ' ')})"
        elif where.startswith("module_"):
            where = f"module {where.split('_')[1]} fwd/bwd"
        else:
            where = where.replace("fwd_bwd", "fwd/bwd")
        cpu = fmt(r.get("step_cpu_s"), 2)
        cpu_ratio = fmt(r.get("cpu_ratio_to_e2e"), 2)
        if r["mode"] == "sequential" and r.get("step_cpu_s") is not None:
            cpu = f"{r['step_cpu_s']:.2f} per module (sum {r['step_cpu_sum_over_modules_s']:.2f})"
            cpu_ratio = f"{r['cpu_ratio_to_e2e']:.2f} (sum {r['cpu_sum_over_modules_ratio_to_e2e']:.2f})"
        lines.append(
            f"| {MODE_LABEL[r['mode']]} | {r['K'] or '–'} | {','.join(map(str, r['split'])) if r['split'] else '–'} "
            f"| {fmt(mib(r['peak_bytes']), 1)} | {fmt(r.get('ratio_to_e2e'), 3)} | "
            f"{fmt(mib(b['weights_and_buffers']), 1)} | {fmt(mib(b['optimizer_state']), 1)} | "
            f"{fmt(mib(b['gradients']), 1)} | {fmt(mib(b['activations_and_temporaries']), 1)} | "
            f"{fmt(mib(b['inputs']), 2)} | {where} | {cpu} | {cpu_ratio} | {fmt(r.get('step_wall_s'), 2)} |"
        )
    return "\n".join(lines)


def module_table(module_records: list[dict[str, Any]], name: str, k: int) -> str:
    rows = [m for m in module_records if m["model"] == name and m["K"] == k]
    if not rows:
        return ""
    lines = [
        "| module | layers | trained params MiB | AdamW state MiB | gradients MiB (at peak) | activations + "
        "temporaries MiB (at peak) | cache MiB | peak MiB | peak at | CPU s/step |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in rows:
        b = m["breakdown_at_peak_bytes"]
        lines.append(
            f"| {m['module']} | {m['blocks']} | {fmt(mib(m['trainable_param_bytes']), 1)} | "
            f"{fmt(mib(b['optimizer_state']), 1)} | {fmt(mib(b['gradients']), 1)} | "
            f"{fmt(mib(b['activations_and_temporaries']), 1)} | {fmt(mib(m['cache_bytes']), 1)} | "
            f"{fmt(mib(m['peak_bytes']), 1)} | {(m['peak_phase'] or '').replace('_', ' ')} | "
            f"{fmt(m['step_cpu_s'], 2)} |"
        )
    return "\n".join(lines)


def _state(record: dict[str, Any]) -> int:
    b = record["breakdown_at_peak_bytes"]
    return b["weights_and_buffers"] + b["optimizer_state"] + b["inputs"]


def optimizer_phase_peak(record: dict[str, Any]) -> int | None:
    """Peak of the AdamW-step phase (state + that phase's largest running sum)."""
    above = (record.get("phase_peak_above_state_bytes") or {}).get("optimizer")
    return None if above is None else _state(record) + above


def _join(values: list[str]) -> str:
    return " / ".join(values)


def _ks(records: list[dict[str, Any]]) -> str:
    return ", ".join(str(r["K"]) for r in records)


def _activations(record: dict[str, Any]) -> int:
    return record["breakdown_at_peak_bytes"]["activations_and_temporaries"]


def _checkpointing_text(ck: dict[str, Any]) -> str:
    optimizer_peak = ""
    if ck["peak_phase"] == "optimizer":
        optimizer_peak = report.text(
            NAME,
            "shows_checkpointing_optimizer",
            gradients=mib(ck["breakdown_at_peak_bytes"]["gradients"]),
            temporaries=mib(ck["breakdown_at_peak_bytes"]["activations_and_temporaries"]),
            fwd_bwd=mib(_state(ck) + ck["phase_peak_above_state_bytes"]["fwd_bwd"]),
        )
    return report.text(
        NAME,
        "shows_checkpointing",
        ratio=ck["ratio_to_e2e"],
        peak=mib(ck["peak_bytes"]),
        optimizer_peak=optimizer_peak,
    )


def _sequential_text(result: dict[str, Any], name: str, seq: list[dict[str, Any]], e2e_breakdown: dict) -> str:
    first = [m for m in result["module_records"] if m["model"] == name and m["K"] == seq[-1]["K"]]
    if all(r["peak_module"] == 1 for r in seq):
        peak_module = report.text(NAME, "shows_sequential_module_one")
    else:
        peak_module = _join([str(r["peak_module"]) for r in seq])
    modules = ""
    if first:
        k = seq[-1]["K"]
        modules = report.text(
            NAME,
            "shows_sequential_modules",
            k=k,
            trained=", ".join(str(mib(m["trainable_param_bytes"])) for m in first),
            activations=", ".join(str(mib(_activations(m))) for m in first),
            e2e_share=mib(e2e_breakdown["activations_and_temporaries"] / k),
            weights=mib(seq[-1]["breakdown_at_peak_bytes"]["weights_and_buffers"]),
        )
    return report.text(
        NAME,
        "shows_sequential",
        ratios=_join([str(r["ratio_to_e2e"]) for r in seq]),
        peaks=_join([str(mib(r["peak_bytes"])) for r in seq]),
        peak_module=peak_module,
        modules=modules,
    )


def what_this_shows(result: dict[str, Any]) -> list[str]:
    """Short statements built from the measured numbers only (one per model, then the timing)."""
    records = result["records"]
    out = []
    timing_ratios: dict[str, list[float]] = {"checkpointing": [], "parallel": [], "sequential": []}
    for name in result["settings"]["models"]:
        e2e = find(records, model=name, mode="e2e")
        ck = find(records, model=name, mode="checkpointing")
        if e2e is None:
            continue
        ks = sorted(result["settings"]["ks"][name])
        par = [find(records, model=name, mode="parallel", K=k) for k in ks]
        seq = [find(records, model=name, mode="sequential", K=k) for k in ks]
        par = [r for r in par if r]
        seq = [r for r in seq if r]
        b = e2e["breakdown_at_peak_bytes"]
        static = b["weights_and_buffers"] + b["optimizer_state"]
        parts = [
            report.text(
                NAME,
                "shows_model",
                label="BERT" if name == "bert" else "ViT",
                ks=", ".join(map(str, ks)),
                peak=mib(e2e["peak_bytes"]),
                static=mib(static),
                static_pct=100 * static / e2e["peak_bytes"],
                activations=mib(b["activations_and_temporaries"]),
            )
        ]
        if ck:
            parts.append(_checkpointing_text(ck))
        if par:
            parts.append(
                report.text(
                    NAME,
                    "shows_parallel",
                    ratios=_join([str(r["ratio_to_e2e"]) for r in par]),
                    peaks=_join([str(mib(r["peak_bytes"])) for r in par]),
                    gradients=_join([str(mib(r["breakdown_at_peak_bytes"]["gradients"])) for r in par]),
                    optimizer_peaks=_join([str(mib(optimizer_phase_peak(r))) for r in par]),
                    e2e_optimizer_peak=mib(optimizer_phase_peak(e2e)),
                )
            )
            above = [r for r in par if ck and r["peak_bytes"] > ck["peak_bytes"]]
            if above:
                parts.append(report.text(NAME, "shows_parallel_above", ks=_ks(above)))
        if seq:
            parts.append(_sequential_text(result, name, seq, b))
            above = [r for r in seq if ck and r["peak_bytes"] > ck["peak_bytes"]]
            if above:
                parts.append(report.text(NAME, "shows_sequential_above", ks=_ks(above)))
        out.append(" ".join(parts).strip())
        for mode, rows in (("checkpointing", [ck] if ck else []), ("parallel", par)):
            timing_ratios[mode] += [r["cpu_ratio_to_e2e"] for r in rows if r.get("cpu_ratio_to_e2e") is not None]
        timing_ratios["sequential"] += [
            r["cpu_sum_over_modules_ratio_to_e2e"] for r in seq if r.get("cpu_sum_over_modules_ratio_to_e2e")
        ]
    spreads = []
    for r in records:
        times = r.get("step_cpu_times_s") or []
        if len(times) >= 2:
            spreads.append((100 * (max(times) - min(times)) / min(times), r, times))
    ratios = "; ".join(
        f"{mode} {min(v):.2f}-{max(v):.2f}x E2E" if len(v) > 1 else f"{mode} {v[0]:.2f}x E2E"
        for mode, v in (
            ("gradient checkpointing", timing_ratios["checkpointing"]),
            ("TRGL parallel", timing_ratios["parallel"]),
            ("TRGL sequential (all K module steps of one batch)", timing_ratios["sequential"]),
        )
        if v
    )
    text = report.text(NAME, "shows_time", ratios=ratios)
    if spreads:
        worst = max(spreads, key=lambda item: item[0])
        text += report.text(
            NAME,
            "shows_time_spread",
            spread=worst[0],
            model=worst[1]["model"],
            mode=worst[1]["mode"],
            first=worst[2][0],
            second=worst[2][1],
        )
    out.append(text)
    return out


def write_outputs(result: dict[str, Any], out_dir: Path) -> str:
    out_dir = Path(out_dir)
    report.write_json(out_dir / f"{NAME}.json", result)
    env_info, settings = result["environment"], result["settings"]
    start, end = env_info.get("load_average_at_start") or [None], env_info.get("load_average_at_end") or [None]
    load = f"{start[0]:.1f} at the start, {end[0]:.1f} at the end" if start[0] is not None else "unknown"
    models = []
    for name in settings["models"]:
        spec = settings["model_specs"][name]
        batch, size = spec["batch"], spec["config"].get("image_size")
        shape = (
            f"{batch['batch_size']} x {batch['seq_len']} tokens"
            if "seq_len" in batch
            else (f"{batch['batch_size']} x 3 x {size} x {size}")
        )
        models.append(
            report.text(
                NAME,
                "model",
                label=spec["label"],
                cls=spec["class"],
                shape=shape,
                config=json.dumps(spec["config"]),
                attn=result["notes"].get("attn_implementation", {}).get(name),
            )
        )
    lines = [
        report.text(
            NAME,
            "header",
            command=result["command"],
            runtime_min=result["runtime_s"] / 60,
            date=env_info["date_utc"],
            torch=env_info["torch"],
            transformers=env_info["transformers"],
            cpu=env_info["cpu"],
            threads=env_info["torch_threads"],
            git=(env_info.get("git_commit_at_start") or env_info["git_commit"] or "")[:10],
            models="\n".join(models),
            max_residual=result["max_residual_bytes"],
            timed=settings["timed_steps"],
            validation=", ".join(f"{k} {'OK' if v['ok'] else 'FAILED'}" for k, v in result["validation"].items()),
            adamw=result["notes"].get("adamw_implementation"),
            cores=env_info["cpu_count"],
            load=load,
        ),
        "",
    ]
    for name in settings["models"]:
        spec = settings["model_specs"][name]
        lines += [f"## {spec['label']}", "", results_table(result["records"], name), ""]
        e2e = find(result["records"], model=name, mode="e2e")
        if e2e:
            lines += [
                report.text(
                    NAME,
                    "model_note",
                    params=mib(e2e["trainable_param_bytes"]),
                    weights=mib(e2e["breakdown_at_peak_bytes"]["weights_and_buffers"]),
                ),
                "",
            ]
        for k in settings["ks"][name]:
            table = module_table(result["module_records"], name, k) if k == 4 else ""
            if table:
                lines += [f"### Per module: sequential, K = {k}", "", table, ""]
    lines += ["## What this shows", ""] + [f"- {sentence}" for sentence in what_this_shows(result)]
    lines += [f"- {note}" for note in result.get("extra_notes") or []]
    if result.get("skipped"):
        lines += ["", "Skipped for time: " + "; ".join(result["skipped"]) + "."]
    lines.append("")
    text = "\n".join(lines)
    report.write_atomically(out_dir / f"{NAME}.md", text)
    return text
