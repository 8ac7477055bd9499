"""Tables, floors and the issue-26 targets of `benchmarks.memory_decoder` (JSON in, Markdown out)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.common.report import text
from benchmarks.reports.memory_decoder_targets import NAME, label, targets

MIB = 2**20
BYTES_TRAINED = 16  # fp32 weight + gradient + AdamW exp_avg + exp_avg_sq
BYTES_FROZEN = 4


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
    anon_baseline = result["baseline"].get("import_peak_anon_bytes", 0)
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
        anon, anon_floors = record.get("whole_peak_anon_bytes"), phase_floors(record, anon_baseline)
        reference = e2e.get((record["width"], record["layers"]))
        floor = max(floors) if floors else None
        saving = (reference - peak) / (reference - floor) if reference and floor and reference > floor else None
        phases = [p for p in record["phases"] if p["phase"].startswith("phase ")]
        table.append(
            {
                "arm": record["arm"],
                "part": record.get("part"),
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
                "train_wall_s": record.get("train_wall_s"),
                "offload": record["spec"]["arm"].get("offload"),
                "from_checkpoint": bool(record["spec"].get("checkpoint")),
                "anon_peak_bytes": anon,
                "anon_floor_bytes": max(anon_floors) if anon and anon_floors else None,
                "x_floor_anon": anon / max(anon_floors) if anon and anon_floors else None,
                "anon_phase_peaks_bytes": [p.get("peak_anon_bytes") for p in phases],
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
                "largest_anon_bytes": best.get("whole_peak_anon_bytes") if best else None,
                "largest_cgroup_max_bytes": (best.get("cgroup") or {}).get("max_usage_bytes") if best else None,
                "largest_generate": best.get("generate") if best else None,
                "largest_train_wall_s": best.get("train_wall_s") if best else None,
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


def mib(value: float | None) -> str:
    return "–" if value is None else f"{value / MIB:.0f}"


def ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def render(result: dict[str, Any], table, caps, goals) -> str:
    """The Markdown report."""
    s, base, machine = result["settings"], result["baseline"], result["machine"]
    models = "; ".join(text(NAME, "model", name=k, **m) for k, m in s["models"].items())
    lines = [
        text(NAME, "title", quick=text(NAME, "quick") if result["quick"] else ""),
        "",
        text(
            NAME,
            "command",
            command=result["command"],
            runtime_s=result["runtime_s"],
            cpu=machine["cpu"],
            cpu_count=machine["cpu_count"],
            mem_total_mib=machine["mem_total_mib"],
            torch=machine["torch"],
            transformers=machine["transformers"],
            commit=machine["git_commit"][:10],
            uncommitted=len(machine["git_uncommitted_trgl_hf"]),
        ),
        "",
        text(NAME, "setup", steps=s["steps_per_phase"], data=s["data"], models=models),
        "",
        text(NAME, "floor", baseline=mib(base["import_peak_rss_bytes"])),
        "",
        "| width | L | arm | base params | model params | peak MiB | x e2e | floor MiB | x floor | saving captured | "
        "anon peak MiB | anon floor MiB | x anon floor | build MiB | phase peaks MiB | anon phase peaks MiB | CPU s "
        "| train s |",
        "|" + " --- |" * 18,
    ]
    for r in table:
        if "failure" in r:
            lines.append(f"| {r['width']} | {r['layers']} | {r['arm']} | failed: {r['failure']} |" + " |" * 14)
            continue
        lines.append(
            f"| {r['width']} | {r['layers']} | {label(r)} | {r['base_params'] / 1e6:.1f}M | "
            f"{r['model_params'] / 1e6:.1f}M | {mib(r['peak_bytes'])} | {ratio(r['x_e2e'])} | {mib(r['floor_bytes'])} "
            f"| {ratio(r['x_floor'])} | {ratio(r['saving_captured'])} | {mib(r.get('anon_peak_bytes'))} | "
            f"{mib(r.get('anon_floor_bytes'))} | {ratio(r.get('x_floor_anon'))} | {mib(r['build_peak_bytes'])} | "
            f"{' '.join(mib(p) for p in r['phase_peaks_bytes'])} | "
            f"{' '.join(mib(p) for p in r.get('anon_phase_peaks_bytes') or [])} | {r['cpu_s']:.0f} | "
            f"{ratio(r.get('train_wall_s'))} |"
        )
    for skip in result["skipped"]:
        lines.append("\n" + text(NAME, "not_run", skip=json.dumps(skip)))
    check = result["cgroup_check"]
    lines += [
        "",
        text(
            NAME,
            "caps",
            limit_mib=check.get("limit_mib"),
            works=check.get("works"),
            width=s["cap_model"]["width"],
            grid=s["cap_grid_layers"],
            steps=s["steps_per_phase"],
        ),
        "",
        "| cap | arm | largest L | its params | its peak MiB | its anon peak MiB | its cgroup max MiB | "
        "x e2e params | smallest OOM L | tries (L: result) |",
        "|" + " --- |" * 10,
    ]
    for c in caps:
        params = "–" if c["largest_params"] is None else f"{c['largest_params'] / 1e6:.1f}M"
        stopped = "" if c["complete"] else f" (stopped: {c['reason']})"
        lines.append(
            f"| {c['cap_gib']:g} GiB | {c['arm']} | {c['largest_layers']} | {params} | "
            f"{mib(c['largest_peak_bytes'])} | {mib(c.get('largest_anon_bytes'))} | "
            f"{mib(c.get('largest_cgroup_max_bytes'))} | {ratio(c['x_e2e_params'])} | "
            f"{c['smallest_failing_layers']} | "
            f"{c['tries']}{stopped} |"
        )
    lines += [
        "",
        text(NAME, "targets"),
        "",
        *[f"- {g}" for g in goals],
        "",
        "## Reading",
        "",
        text(NAME, "reading"),
        *[f"- {n}" for n in result.get("notes") or []],
        *continued_from(s.get("main_table_from")),
        *dropped(result),
        *parts(result),
        "",
        "## Not measured",
        "",
        text(NAME, "not_measured"),
        "",
    ]
    return "\n".join(lines)


def continued_from(commands: list[str] | None) -> list[str]:
    """A reading line naming the earlier runs whose main table and cap tries this result reuses (`--main-from`)."""
    if not commands:
        return []
    earlier = "; then ".join(f"`{c}`" for c in commands)
    return [text(NAME, "continued_from", earlier=earlier)]


def parts(result: dict[str, Any]) -> list[str]:
    """Reading lines for the parts of a run split over several invocations (their commits and times)."""
    return [
        text(NAME, "part", command=p["command"], date_utc=p["date_utc"], commit=p["git_commit"][:10], what=p["what"])
        for p in result.get("parts") or []
    ]


def dropped(result: dict[str, Any]) -> list[str]:
    """A reading line for cap tries left out of the search (and why)."""
    info = result.get("dropped_tries")
    if not info:
        return []
    tries = ", ".join(f"{t['arm']} {t['cap_gib']:g} GiB L = {t['layers']}" for t in info["tries"])
    return [text(NAME, "dropped", tries=tries, why=info["why"])]


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
