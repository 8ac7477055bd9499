"""The issue-26 targets of `benchmarks.memory_decoder`: met / missed, with the numbers (prose:
`templates/memory_decoder.md`)."""

from __future__ import annotations

from typing import Any

from benchmarks.common.report import text

NAME = "memory_decoder"


def label(row: dict[str, Any]) -> str:
    """The arm's name, tagged with the part of the run it ran in when it is not the first."""
    return row["arm"] + (f" [{row['part']}]" if row.get("part") else "")


def floor_lines(table: list[dict[str, Any]]) -> list[str]:
    lines = []
    for row in table:
        if row["arm"].startswith("seq_k") and row.get("x_floor_anon"):
            verdict = "met" if row["x_floor_anon"] <= 1.25 else "missed"
            lines.append(text(NAME, "target_floor", label=label(row), width=row["width"], layers=row["layers"],
                              anon=row["x_floor_anon"], verdict=verdict, rss=row["x_floor"]))  # fmt: skip
    return lines


def depth_lines(table: list[dict[str, Any]]) -> list[str]:
    deep = {(r["layers"], r["arm"]): r for r in table if r["width"] == 256 and r.get("peak_bytes")}
    lines = []
    for short, long in (("seq_k8", "seq_k16"), ("seq_k8_disk", "seq_k16_disk")):
        if (24, short) in deep and (48, long) in deep:
            a, b = deep[(24, short)], deep[(48, long)]
            anon = b["anon_peak_bytes"] / a["anon_peak_bytes"]
            rss = b["peak_bytes"] / a["peak_bytes"]
            verdict = "met" if abs(anon - 1) <= 0.10 else "missed"
            lines.append(text(NAME, "target_depth", long=long, short=short, anon=anon, verdict=verdict, rss=rss))
    return lines


def cap_lines(caps: list[dict[str, Any]]) -> list[str]:
    lines = []
    for row in caps:
        if row["arm"].startswith("seq") and row["cap_gib"] == 4 and row.get("x_e2e_params"):
            stopped = "" if row["complete"] else text(NAME, "target_cap_stopped", reason=row["reason"])
            verdict = "met" if row["x_e2e_params"] >= 5 else "missed"
            lines.append(text(NAME, "target_cap", arm=row["arm"], params=row["largest_params"] / 1e6,
                              layers=row["largest_layers"], x=row["x_e2e_params"], verdict=verdict,
                              stopped=stopped))  # fmt: skip
            generated = row.get("largest_generate")
            if generated:
                details = ""
                if generated["ok"]:
                    details = text(NAME, "target_generate_details", cls=generated["class"], layers=generated["layers"],
                                   params=generated["params"] / 1e6, new_tokens=generated["new_tokens"],
                                   seconds=generated["seconds"])  # fmt: skip
                lines.append(
                    text(NAME, "target_generate", stage=generated["stage"], ok=generated["ok"], details=details)
                )
    return lines


def wall_lines(table: list[dict[str, Any]]) -> list[str]:
    """Offloaded (`X_disk`) against resident (`X`) train wall time on the same model, run back to back."""
    rows = {(r["width"], r["layers"], r["arm"], r.get("part")): r for r in table if r.get("train_wall_s")}
    lines = []
    for (width, layers, arm, part), disk in rows.items():
        resident = rows.get((width, layers, arm.removesuffix("_disk"), part))
        if arm.endswith("_disk") and resident:
            cost = disk["train_wall_s"] / resident["train_wall_s"] - 1
            lines.append(text(NAME, "target_wall", label=label(disk), width=width, layers=layers,
                              disk_s=disk["train_wall_s"], resident_s=resident["train_wall_s"], cost=cost,
                              verdict="met" if cost <= 0.10 else "missed", disk_cpu=disk["cpu_s"],
                              resident_cpu=resident["cpu_s"]))  # fmt: skip
    return lines


def gc_lines(table: list[dict[str, Any]]) -> list[str]:
    """Gradient checkpointing with offload (`X_gc_disk`) against the same offloaded arm without (`X_disk`), both run
    back to back in the same part (issue 26, item 5: no target, the numbers)."""
    rows = {(r["width"], r["layers"], r["arm"], r.get("part")): r for r in table if r.get("anon_peak_bytes")}
    lines = []
    for (width, layers, arm, part), gc in rows.items():
        plain = rows.get((width, layers, arm.replace("_gc_disk", "_disk"), part))
        if arm.endswith("_gc_disk") and plain:
            anon = gc["anon_peak_bytes"] / plain["anon_peak_bytes"] - 1
            rss = gc["peak_bytes"] / plain["peak_bytes"] - 1
            lines.append(text(NAME, "target_gc", gc=label(gc), plain=label(plain), width=width, layers=layers,
                              gc_anon=gc["anon_peak_bytes"] / 2**20, plain_anon=plain["anon_peak_bytes"] / 2**20,
                              anon=anon, gc_x=gc["x_floor_anon"], plain_x=plain["x_floor_anon"],
                              gc_rss=gc["peak_bytes"] / 2**20, plain_rss=plain["peak_bytes"] / 2**20, rss=rss,
                              gc_s=gc["train_wall_s"], plain_s=plain["train_wall_s"]))  # fmt: skip
    return lines


def targets(table: list[dict[str, Any]], caps: list[dict[str, Any]]) -> list[str]:
    """The measurable targets of issue 26, met or missed today."""
    lines = floor_lines(table) + depth_lines(table) + cap_lines(caps)
    for row in table:
        if row["arm"].startswith("par") and row.get("x_e2e"):
            verdict = "met" if row["x_e2e"] <= 1.0 else "missed"
            lines.append(text(NAME, "target_parallel", arm=row["arm"], width=row["width"], layers=row["layers"],
                              x=row["x_e2e"], verdict=verdict))  # fmt: skip
    walls = wall_lines(table) or [text(NAME, "target_wall_none")]
    return lines + gc_lines(table) + walls
