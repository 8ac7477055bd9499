"""Tables, floors and the issue-26 targets of `benchmarks.memory_decoder` (JSON in, Markdown out)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

MIB = 2**20
BYTES_TRAINED = 16  # fp32 weight + gradient + AdamW exp_avg + exp_avg_sq
BYTES_FROZEN = 4

NOT_MEASURED = [
    "`trgl_offload` (disk / cpu offload of inactive modules) and lazy loading of a base from its checkpoint: not in "
    "the library yet, so no offloaded arm and no offload wall-time overhead.",
    'Stage export (`trgl_save_stages="none"`): the cost of writing stages, and whether the stages of the cap '
    "search load and generate.",
    "GPU memory: `benchmarks/gpu_memory_decoder.py` has the rows but was not run (no GPU here).",
    "Accuracy / perplexity (random weights and random tokens; a few steps per phase).",
    "Multilap mode and its per-module optimizer states; 8 GiB caps (slow on 2 cores); caps between grid depths.",
    "Activations in the floor: the floor counts weights, gradients and AdamW state of what a phase trains (plus the "
    "frozen shared vocabulary matrix a tied head reads) and the import baseline, not the phase's activations.",
]


READING = [
    "A try can report a `VmHWM` slightly above its cap (e2e L = 16: 2053 MiB under 2 GiB): `VmHWM` counts resident "
    "pages of shared files (libraries) that are presumably charged to the group that first read them, not to the try.",
    "The cgroup charges the page cache of what a run writes (progress weights) to the run; the kernel reclaims it "
    "before killing, as on a user's small machine.",
    "Arms name their head explicitly (`native` or `tied`): since commit 7f64871 a decoder built from a config "
    'defaults to `aux_head="tied"`. Main-table rows without a head in their spec ran before that default, with '
    "native heads (their model parameter counts include K - 1 extra vocabulary matrices).",
]


def machine() -> dict[str, Any]:
    """Machine, versions and git state, without importing torch."""
    cpu = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    root = Path(__file__).resolve().parents[2]
    git = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True).stdout.strip()  # noqa: E731
    versions = {}
    for name in ("torch", "transformers", "trgl_hf"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "mem_total_mib": int(mem) // 1024,
        "kernel": platform.release(),
        "python": platform.python_version(),
        **versions,
        "git_commit": git("rev-parse", "HEAD"),
        "git_uncommitted_trgl_hf": git("status", "--porcelain", "trgl_hf").splitlines(),
        "load_average": list(os.getloadavg()),
    }


def phase_floors(record: dict[str, Any], baseline: int) -> list[int]:
    """Floor of every training phase: baseline + 16 B per trained parameter (+ 4 B per frozen shared vocab entry)."""
    spec, arm = record["spec"], record["spec"]["arm"]
    floors = []
    for phase in (p for p in record["phases"] if p["phase"].startswith("phase ")):
        floor = baseline + BYTES_TRAINED * phase.get("trainable_params", 0)
        if arm.get("head") == "tied" and arm.get("mode") == "sequential" and phase["phase"] != "phase 1":
            floor += BYTES_FROZEN * spec["vocab"] * spec["width"]
        floors.append(floor)
    return floors


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per main-table run: peak, x end-to-end, floor, x floor, share of the possible saving, phase peaks."""
    baseline = result["baseline"]["import_peak_rss_bytes"]
    e2e = {(r["width"], r["layers"]): r["whole_peak_rss_bytes"] for r in result["runs"] if r["arm"] == "e2e"}
    table = []
    for record in result["runs"]:
        if not record.get("ok"):
            table.append(
                {
                    "arm": record["arm"],
                    "width": record["width"],
                    "layers": record["layers"],
                    "failure": record.get("failure"),
                }
            )
            continue
        peak, floors = record["whole_peak_rss_bytes"], phase_floors(record, baseline)
        reference = e2e.get((record["width"], record["layers"]))
        floor = max(floors) if floors else None
        saving = (reference - peak) / (reference - floor) if reference and floor and reference > floor else None
        phases = [p for p in record["phases"] if p["phase"].startswith("phase ")]
        table.append(
            {
                "arm": record["arm"],
                "width": record["width"],
                "layers": record["layers"],
                "base_params": record["base_params"],
                "model_params": record["model_params"],
                "peak_bytes": peak,
                "x_e2e": peak / reference if reference else None,
                "floor_bytes": floor,
                "x_floor": peak / floor if floor else None,
                "saving_captured": saving,
                "build_peak_bytes": next(p["peak_rss_bytes"] for p in record["phases"] if p["phase"] == "build"),
                "phase_peaks_bytes": [p["peak_rss_bytes"] for p in phases],
                "phase_floors_bytes": floors,
                "cpu_s": record["cpu_s"],
                "wall_s": record["wall_s"],
            }
        )
    return table


def bounds(tries: list[dict[str, Any]]) -> tuple[dict | None, int | None]:
    """The deepest try that fitted, and the shallowest depth that was OOM-killed (from the tries themselves)."""
    fitted = [t for t in tries if t["ok"]]
    killed = [t["layers"] for t in tries if t.get("failure") == "oom-killed"]
    return (max(fitted, key=lambda t: t["layers"]) if fitted else None), (min(killed) if killed else None)


def cap_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Largest depth per (cap, arm), with its parameters relative to end-to-end's under the same cap; a search cut
    short (deadline, timeout) reports the deepest depth that fitted so far."""
    out = []
    for search in result["cap_search"]:
        best, failing = bounds(search["tries"])
        out.append(
            {
                "cap_gib": search["cap_gib"],
                "arm": search["arm"],
                "largest_layers": best["layers"] if best else None,
                "largest_params": best["params"] if best else None,
                "largest_peak_bytes": best["whole_peak_rss_bytes"] if best else None,
                "smallest_failing_layers": failing,
                "tries": ", ".join(f"{t['layers']}: {'fits' if t['ok'] else t['failure']}" for t in search["tries"]),
                "complete": search["complete"],
                "reason": search.get("reason"),
            }
        )
    e2e = {row["cap_gib"]: row["largest_params"] for row in out if row["arm"] == "e2e"}
    for row in out:
        reference = e2e.get(row["cap_gib"])
        row["x_e2e_params"] = row["largest_params"] / reference if row["largest_params"] and reference else None
    return out


def targets(table: list[dict[str, Any]], caps: list[dict[str, Any]]) -> list[str]:
    """The measurable targets of issue 26, met or missed today."""
    lines = []
    for row in table:
        if row["arm"].startswith("seq_k") and row.get("x_floor"):
            verdict = "met" if row["x_floor"] <= 1.25 else "missed"
            lines.append(
                f"Sequential peak <= 1.25x floor — {row['arm']} W={row['width']} L={row['layers']}: "
                f"{row['x_floor']:.2f}x ({verdict})"
            )
    deep = {(r["layers"], r["arm"]): r for r in table if r["width"] == 256 and r.get("peak_bytes")}
    if (24, "seq_k8") in deep and (48, "seq_k16") in deep:
        ratio = deep[(48, "seq_k16")]["peak_bytes"] / deep[(24, "seq_k8")]["peak_bytes"]
        lines.append(
            f"Peak independent of depth — L=48 K=16 / L=24 K=8 (width 256): {ratio:.2f} "
            f"({'met' if abs(ratio - 1) <= 0.10 else 'missed'}; target within 10%)"
        )
    for row in caps:
        if row["arm"].startswith("seq") and row["cap_gib"] == 4 and row.get("x_e2e_params"):
            lines.append(
                f"4 GiB cap, {row['arm']} / e2e parameters: {row['x_e2e_params']:.2f}x "
                f"({'met' if row['x_e2e_params'] >= 5 else 'missed'}; target >= 5x)"
            )
    for row in table:
        if row["arm"].startswith("par") and row.get("x_e2e"):
            lines.append(
                f"Parallel <= 1.0x end-to-end — {row['arm']} W={row['width']} L={row['layers']}: "
                f"{row['x_e2e']:.2f}x ({'met' if row['x_e2e'] <= 1.0 else 'missed'})"
            )
    lines.append("Offloading <= 10% wall time: not measurable (no `trgl_offload` yet).")
    return lines


def mib(value: float | None) -> str:
    return "–" if value is None else f"{value / MIB:.0f}"


def ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def render(result: dict[str, Any], table, caps, goals) -> str:
    """The Markdown report."""
    s, base = result["settings"], result["baseline"]
    lines = [
        "# Decoder training memory (issue 26, item 7)" + (" — quick mode" if result["quick"] else ""),
        "",
        f"Command: `{result['command']}` ({result['runtime_s']:.0f} s). Machine: {result['machine']['cpu']}, "
        f"{result['machine']['cpu_count']} cores, {result['machine']['mem_total_mib']} MiB; torch "
        f"{result['machine']['torch']}, transformers {result['machine']['transformers']}, commit "
        f"{result['machine']['git_commit'][:10]} (uncommitted trgl_hf files: "
        f"{len(result['machine']['git_uncommitted_trgl_hf'])}).",
        "",
        "Every run is a fresh process: a `LlamaForCausalLM` built from a `LlamaConfig` (random weights, untied LM "
        f"head, heads of 64 dims), {s['steps_per_phase']} optimizer step(s) per phase, fp32 AdamW (`adamw_torch`), "
        f'{s["data"]}, one torch thread, `use_cpu=True`, `save_strategy="no"`, `trgl_save_stages="none"`, '
        '`report_to="none"`; `gc` arms pass `gradient_checkpointing=True`. Peak = `VmHWM` of the whole process; '
        "phase peaks reset `VmHWM` (`/proc/self/clear_refs` = 5) at `on_phase_begin` and read it at `on_phase_end` "
        "(after the phase's progress weights are saved). Models: "
        + "; ".join(
            f"{k}: hidden {m['width']}, intermediate {m['intermediate']}, vocab {m['vocab']}, batch {m['batch']} x "
            f"{m['seq']} tokens"
            for k, m in s["models"].items()
        )
        + ".",
        "",
        f"Import baseline (a process importing torch, transformers, trgl_hf): {mib(base['import_peak_rss_bytes'])} "
        "MiB. **Floor** of a phase = baseline + 16 B x parameters the phase trains (counted from `requires_grad` at "
        "its last step: fp32 weight, gradient, AdamW's two moments) + 4 B x the frozen shared vocabulary matrix "
        "read by a tied head after module 1; the arm's floor is its largest phase's. Activations are not in the "
        "floor. *Saving captured* = (e2e - peak) / (e2e - floor).",
        "",
        "| width | L | arm | base params | model params | peak MiB | x e2e | floor MiB | x floor | saving captured | "
        "build MiB | phase peaks MiB | CPU s |",
        "|" + " --- |" * 13,
    ]
    for r in table:
        if "failure" in r:
            lines.append(f"| {r['width']} | {r['layers']} | {r['arm']} | failed: {r['failure']} |" + " |" * 9)
            continue
        lines.append(
            f"| {r['width']} | {r['layers']} | {r['arm']} | {r['base_params'] / 1e6:.1f}M | "
            f"{r['model_params'] / 1e6:.1f}M | {mib(r['peak_bytes'])} | {ratio(r['x_e2e'])} | {mib(r['floor_bytes'])} "
            f"| {ratio(r['x_floor'])} | {ratio(r['saving_captured'])} | {mib(r['build_peak_bytes'])} | "
            f"{' '.join(mib(p) for p in r['phase_peaks_bytes'])} | {r['cpu_s']:.0f} |"
        )
    for skip in result["skipped"]:
        lines.append(f"\nNot run: {json.dumps(skip)}")
    check = result["cgroup_check"]
    lines += [
        "",
        "## Largest decoder under a memory cap",
        "",
        f"cgroup check (a child allocating 2x a {check.get('limit_mib')} MiB limit is OOM-killed, one allocating "
        f"half of it is not): {check.get('works')}. Width {s['cap_model']['width']}, depths searched over "
        f"{s['cap_grid_layers']} (the predicted depth first, then outwards, then bisection), "
        f"{s['steps_per_phase']} steps per phase; each try in its own memory cgroup.",
        "",
        "| cap | arm | largest L | its params | its peak MiB | x e2e params | smallest OOM L | tries (L: result) |",
        "|" + " --- |" * 8,
    ]
    for c in caps:
        params = "–" if c["largest_params"] is None else f"{c['largest_params'] / 1e6:.1f}M"
        stopped = "" if c["complete"] else f" (stopped: {c['reason']})"
        lines.append(
            f"| {c['cap_gib']:g} GiB | {c['arm']} | {c['largest_layers']} | {params} | "
            f"{mib(c['largest_peak_bytes'])} | {ratio(c['x_e2e_params'])} | {c['smallest_failing_layers']} | "
            f"{c['tries']}{stopped} |"
        )
    lines += [
        "",
        "## Issue 26 targets today",
        "",
        *[f"- {g}" for g in goals],
        "",
        "## Reading",
        "",
        *[f"- {n}" for n in READING],
        *continued_from(s.get("main_table_from")),
        *dropped(result),
        *parts(result),
        "",
        "## Not measured",
        "",
        *[f"- {n}" for n in NOT_MEASURED],
        "",
    ]
    return "\n".join(lines)


def continued_from(commands: list[str] | None) -> list[str]:
    """A reading line naming the earlier runs whose main table and cap tries this result reuses (`--main-from`)."""
    if not commands:
        return []
    earlier = "; then ".join(f"`{c}`" for c in commands)
    return [f"- Run in parts: {earlier} (main table and first cap tries); this file's command continued them."]


def parts(result: dict[str, Any]) -> list[str]:
    """Reading lines for the parts of a run split over several invocations (their commits and times)."""
    return [
        f"- Part: `{p['command']}` — ended {p['date_utc']}, commit {p['git_commit'][:10]}, {p['what']}"
        for p in result.get("parts") or []
    ]


def dropped(result: dict[str, Any]) -> list[str]:
    """A reading line for cap tries left out of the search (and why)."""
    info = result.get("dropped_tries")
    if not info:
        return []
    tries = ", ".join(f"{t['arm']} {t['cap_gib']:g} GiB L = {t['layers']}" for t in info["tries"])
    return [f"- Tries left out: {tries}. Why: {info['why']}."]


def write_outputs(result: dict[str, Any], out_dir: Path) -> str:
    """Write `memory_decoder.json` and `.md` in `out_dir`; returns the Markdown."""
    table, caps = rows(result), cap_rows(result)
    goals = targets(table, caps)
    result = {**result, "table": table, "cap_table": caps, "targets": goals}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "memory_decoder.json").write_text(json.dumps(result, indent=1))
    text = render(result, table, caps, goals)
    (out_dir / "memory_decoder.md").write_text(text)
    return text
