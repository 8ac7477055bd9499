"""The SST-2 / MiniLM report's reading of the results: what was not run, heads at chance, and the reading written after
the committed run (prose: `templates/sst2_minilm.md`, the `reading` section, only shown for a full run)."""

from __future__ import annotations

from typing import Any

from benchmarks.common import report
from benchmarks.common.sst2_arms import ARMS

NAME = "sst2_minilm"
PLANNED_SEEDS = [0, 1, 2]
CHANCE = 0.52  # a head at or below this test accuracy predicts (almost) one class: the test split is 49.9% positive


def missing_runs(result: dict[str, Any]) -> list[str]:
    done = {(r["arm"], r.get("num_modules"), r["seed"]) for r in result["runs"]}
    missing = []
    for arm, spec in ARMS.items():
        for k in [None] if spec["kind"] == "plain" else [3, 6]:
            seeds = [s for s in PLANNED_SEEDS if (arm, k, s) not in done]
            if seeds:
                missing.append(
                    f"{spec['label']}{'' if k is None else f' K={k}'}: seed(s) {', '.join(map(str, seeds))}"
                )
    return missing


def heads_at_chance(result: dict[str, Any]) -> list[str]:
    out = []
    for row in result["summary"]:
        if row["num_modules"] is None:
            continue
        low = [m["module"] for m in row["per_module"] if m["test_accuracy_mean"] <= CHANCE]
        if low:
            out.append(f"{row['label']} K={row['num_modules']}: module(s) {', '.join(map(str, low))}")
    return out


def notes(result: dict[str, Any]) -> str:
    if result["quick"]:
        return report.text(NAME, "quick_reading")
    lines = ["## Reading", ""]
    missing = missing_runs(result)
    if missing:
        lines += [report.text(NAME, "not_run", missing="; ".join(missing)), ""]
    chance = heads_at_chance(result)
    if chance:
        lines += [report.text(NAME, "chance", chance_pct=100 * CHANCE, heads="; ".join(chance)), ""]
    lines.append(report.text(NAME, "reading"))
    return "\n".join(lines).rstrip()
