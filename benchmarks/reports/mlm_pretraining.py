"""The masked-LM pretraining report (`benchmarks/mlm_pretraining.py`): masked-token perplexity per depth and the SST-2
accuracy of every stage after fine-tuning, per arm (prose: `templates/mlm_pretraining.md`)."""

from __future__ import annotations

import math
from typing import Any

from benchmarks.common import report

NAME = "mlm_pretraining"


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def ppl(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def by_arm(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {arm["arm"]: arm for arm in result["results"]}


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per depth (the layers below the head): every arm's perplexity and SST-2 accuracy at that depth."""
    arms = by_arm(result)
    e2e = arms["E2E"]
    out = []
    for i, m in enumerate(arms["TRGL"]["modules"]):
        last = i == len(arms["TRGL"]["modules"]) - 1
        probe = e2e["modules"][i].get("probe")
        out.append({
            "module": m["module"], "layers": m["layers"],
            "trgl_ppl": m["perplexity"], "vangl_ppl": arms["VanGL"]["modules"][i]["perplexity"],
            "e2e_probe_ppl": probe["perplexity"] if probe else None,
            "e2e_ppl": e2e["final"]["perplexity"] if last else None,
            **{f"{key}_acc": arms[name]["modules"][i]["sst2"]["accuracy"]
               for key, name in (("trgl", "TRGL"), ("vangl", "VanGL"), ("e2e", "E2E"), ("init", "no pretraining"))},
        })  # fmt: skip
    return out


def main_table(result: dict[str, Any]) -> str:
    """The headline table: perplexity and SST-2 validation accuracy per depth and arm."""
    table = [[r["module"], r["layers"], ppl(r["trgl_ppl"]), ppl(r["vangl_ppl"]), ppl(r["e2e_probe_ppl"]),
              ppl(r["e2e_ppl"]), pct(r["trgl_acc"]), pct(r["vangl_acc"]), pct(r["e2e_acc"]), pct(r["init_acc"])]
             for r in rows(result)]  # fmt: skip
    return report.table(["module k", "layers", "MLM ppl TRGL", "MLM ppl VanGL", "MLM ppl E2E (fresh probe)",
                         "MLM ppl E2E (own head)", "SST-2 acc. TRGL (%)", "SST-2 acc. VanGL (%)",
                         "SST-2 acc. E2E first layers (%)", "SST-2 acc. no pretraining (%)"], table)  # fmt: skip


def cost_table(result: dict[str, Any]) -> str:
    arms = by_arm(result)
    table = []
    for name in ("TRGL", "VanGL", "E2E"):
        arm = arms[name]
        per_module = "" if name == "E2E" else f" ({arm['optimizer_steps'] // len(arm['modules'])} per module)"
        table.append([name, f"{arm['optimizer_steps']}{per_module}", f"{arm['train_wall_s']:.0f}"])
    probe = arms["E2E"]["modules"][0].get("probe")
    if probe:
        table.append(["E2E probes (all depths at once)", result["config"]["steps"], f"{probe['probe_wall_s']:.0f}"])
    return report.table(["arm", "optimizer steps", "train wall time (s)"], table)


def stage_check(result: dict[str, Any]) -> float:
    """Largest relative gap between a saved stage's perplexity and the library's `evaluate()` of its head."""
    arms = by_arm(result)
    return max(abs(m["perplexity"] - m["library_perplexity"]) / m["perplexity"]
               for name in ("TRGL", "VanGL") for m in arms[name]["modules"])  # fmt: skip


def findings(result: dict[str, Any]) -> str:
    """Computed comparisons (no judgement): last-module perplexities, best accuracy per arm, the noise level."""
    r, cfg, wall = rows(result), result["config"], by_arm(result)
    last = r[-1]
    best = {key: max(r, key=lambda row: row[f"{key}_acc"]) for key in ("trgl", "vangl", "e2e", "init")}
    n = result["data"]["sst2"]["validation_rows"]
    p = sum(row[f"{k}_acc"] for row in r for k in ("trgl", "vangl", "e2e", "init")) / (4 * len(r))
    return report.text(NAME, "findings", layers=last["layers"], trgl=ppl(last["trgl_ppl"]),
                       vangl=ppl(last["vangl_ppl"]), e2e=ppl(last["e2e_ppl"]), e2e_probe=ppl(last["e2e_probe_ppl"]),
                       ratio=last["trgl_ppl"] / last["e2e_ppl"],
                       **{f"best_{k}": pct(v[f"{k}_acc"]) for k, v in best.items()},
                       **{f"best_{k}_layers": v["layers"] for k, v in best.items()},
                       stderr=100 * math.sqrt(p * (1 - p) / n), n=n, steps=cfg["steps"],
                       wall_ratio=wall["TRGL"]["train_wall_s"] / wall["E2E"]["train_wall_s"],
                       vangl_wall_ratio=wall["VanGL"]["train_wall_s"] / wall["E2E"]["train_wall_s"])  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    cfg, env, d = result["config"], result["environment"], result["data"]
    header = report.text(NAME, "header", **cfg, command=env["command"], date_utc=env["date_utc"], torch=env["torch"],
                         transformers=env["transformers"], torch_threads=env["torch_threads"],
                         cpu_count=env["cpu_count"], total_wall_s=result["total_wall_s"],
                         split=by_arm(result)["TRGL"]["split"],
                         quick_note=report.text(NAME, "quick_note") if result["quick"] else "",
                         **{k: v for k, v in d.items() if k != "sst2"},
                         unk=100 * d["sst2"]["validation_unk_share"],
                         tokens_per_sentence=d["sst2"]["validation_tokens_per_sentence"],
                         ft_rows=d["sst2"]["train_rows"], val_rows=d["sst2"]["validation_rows"])  # fmt: skip
    lines = [header, "", "## Per depth", "", main_table(result), "", report.text(NAME, "columns"), "",
             "## Findings (computed)", "", findings(result), "", "## Cost", "", cost_table(result), "",
             report.text(NAME, "footer", stage_check=stage_check(result)), ""]  # fmt: skip
    return "\n".join(lines)
