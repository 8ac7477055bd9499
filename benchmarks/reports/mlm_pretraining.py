"""The masked-LM pretraining report (`benchmarks/mlm_pretraining.py`): masked-token perplexity per depth and the SST-2
accuracy of the fine-tuned stages, per arm, mean ± std over seeds, and the paired per-seed comparisons (prose:
`templates/mlm_pretraining.md`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from benchmarks.common import report

NAME = "mlm_pretraining"
ARMS = ("TRGL", "VanGL", "E2E", "E2E (equal time)", "no pretraining")
T975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}
"""Student's t 97.5% quantile by degrees of freedom (2.0 beyond): a paired mean gap is "clear" past t x its stderr."""


def mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0


def cell(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """`mean ± std` over seeds (sample std), or the single value, or `–`."""
    if not values:
        return "–"
    m, s = mean_std([scale * v for v in values])
    return f"{m:.{digits}f}" if len(values) == 1 else f"{m:.{digits}f} ± {s:.{digits}f}"


def arm(run: dict[str, Any], name: str) -> dict[str, Any]:
    return next(a for a in run["results"] if a["arm"] == name)


def module(run: dict[str, Any], name: str, layers: int) -> dict[str, Any] | None:
    return next((m for m in arm(run, name)["modules"] if m["layers"] == layers), None)


def per_seed(result: dict[str, Any], name: str, layers: int, value: Callable[[dict], float | None]) -> list[float]:
    """`value(module)` of arm `name` at depth `layers`, one per seed (seeds without it left out)."""
    out = []
    for run in result["runs"]:
        m = module(run, name, layers)
        v = None if m is None else value(m)
        if v is not None:
            out.append(v)
    return out


def depths(result: dict[str, Any]) -> list[int]:
    return [m["layers"] for m in arm(result["runs"][0], "TRGL")["modules"]]


def ft_depths(result: dict[str, Any]) -> list[int]:
    return [d for d in depths(result) if module(result["runs"][0], "TRGL", d).get("sst2")]


def ppl(result: dict[str, Any], name: str, layers: int, probe: bool = False) -> list[float]:
    """Perplexities per seed: a stage's (TRGL, VanGL), an end-to-end model's own head (full depth) or its probe."""
    last = layers == depths(result)[-1]
    if name in ("TRGL", "VanGL"):
        return per_seed(result, name, layers, lambda m: m["perplexity"])
    if probe:
        return per_seed(result, name, layers, lambda m: m.get("probe", {}).get("perplexity"))
    return [arm(run, name)["final"]["perplexity"] for run in result["runs"]] if last else []


def acc(result: dict[str, Any], name: str, layers: int) -> list[float]:
    return per_seed(result, name, layers, lambda m: (m.get("sst2") or {}).get("accuracy"))


def best_depth(result: dict[str, Any], name: str) -> int:
    """The depth with the best mean SST-2 accuracy (chosen on validation: optimistic)."""
    return max(ft_depths(result), key=lambda d: mean_std(acc(result, name, d) or [0.0])[0])


def ppl_table(result: dict[str, Any]) -> str:
    own = ("E2E", "E2E (equal time)")
    rows = [[d, *(cell(ppl(result, name, d)) for name in ("TRGL", "VanGL")), cell(ppl(result, "E2E", d, True)),
             *(cell(ppl(result, name, d)) for name in own)] for d in depths(result)]  # fmt: skip
    return report.table(["layers", "TRGL (stage k)", "VanGL (stage k)", "E2E (fresh probe)", "E2E (own head)",
                         "E2E equal time (own head)"], rows)  # fmt: skip


def acc_table(result: dict[str, Any]) -> str:
    rows = [[d, *(cell(acc(result, name, d), 100) for name in ARMS)] for d in ft_depths(result)]
    return report.table(["layers", "TRGL (stage)", "VanGL (stage)", "E2E (first layers)",
                         "E2E equal time (first layers)", "no pretraining"], rows)  # fmt: skip


def paired(a: list[float], b: list[float], lower_is_better: bool) -> dict[str, Any]:
    """Per-seed differences a - b, their mean ± std and a verdict ("within noise" unless |mean| > t x stderr)."""
    diffs = [x - y for x, y in zip(a, b)]
    m, s = mean_std(diffs)
    n = len(diffs)
    clear = n > 1 and abs(m) > T975.get(n - 1, 2.0) * s / math.sqrt(n)
    better = (m < 0) == lower_is_better
    verdict = ("TRGL better" if better else "TRGL worse") if clear else "within noise"
    return {"diffs": diffs, "mean": m, "std": s, "verdict": verdict}


def points(values: list[float]) -> list[float]:
    return [100 * v for v in values]


def comparisons(result: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """key -> (label, paired) for TRGL against the other arms: perplexity at full depth, SST-2 accuracy at the last
    fine-tuned depth and at each arm's best depth."""
    full, out, fts = depths(result)[-1], {}, ft_depths(result)
    for other in ("E2E (equal time)", "E2E", "VanGL"):
        pair = paired(ppl(result, "TRGL", full), ppl(result, other, full), True)
        out[f"ppl {other}"] = (f"perplexity, {full} layers: TRGL − {other}", pair)
    if not fts:
        return out
    last, bt = fts[-1], best_depth(result, "TRGL")
    for other in ("E2E (equal time)", "E2E", "VanGL", "no pretraining"):
        pair = paired(points(acc(result, "TRGL", last)), points(acc(result, other, last)), False)
        out[f"acc {other}"] = (f"SST-2 accuracy, {last} layers: TRGL − {other}", pair)
    for other in ("E2E (equal time)", "no pretraining"):
        bo = best_depth(result, other)
        pair = paired(points(acc(result, "TRGL", bt)), points(acc(result, other, bo)), False)
        out[f"best {other}"] = (f"SST-2 accuracy, best depth: TRGL ({bt} layers) − {other} ({bo} layers)", pair)
    return out


def paired_table(result: dict[str, Any]) -> str:
    rows = [[what, ", ".join(f"{d:+.1f}" for d in p["diffs"]), f"{p['mean']:+.1f} ± {p['std']:.1f}", p["verdict"]]
            for what, p in comparisons(result).values()]  # fmt: skip
    seeds = ", ".join(str(run["seed"]) for run in result["runs"])
    return report.table(["comparison (same seed, same masks and validation set)", f"per seed ({seeds})",
                         "mean ± std", "verdict"], rows)  # fmt: skip


def selection_text(result: dict[str, Any]) -> str:
    sel, d = result.get("ft_selection"), result["data"]["sst2"]
    cfg = result["config"]
    if not sel:
        return report.text(NAME, "no_selection", lr=cfg["ft_lr"], epochs=cfg["ft_epochs"])
    scores = "; ".join(f"lr {s['lr']:g}, {s['epochs']:g} epochs: " + ", ".join(
        f"{k} {100 * v:.1f}%" for k, v in s["accuracy"].items()) for s in sel["scores"])  # fmt: skip
    return report.text(NAME, "selection", scores=scores, lr=sel["chosen"]["lr"], epochs=sel["chosen"]["epochs"],
                       layers=sel["layers"], seed=sel["seed"], select_rows=d["select_rows"],
                       select_majority=100 * d["select_majority"],
                       candidates=" and ".join(sel["candidates"]))  # fmt: skip


ANSWERS = {  # (SST-2 verdict, perplexity verdict) against end-to-end at equal wall time -> the answer
    ("TRGL better", "TRGL better"): "worth it at this scale: better on both",
    ("TRGL better", "within noise"): "worth it downstream at this scale (the perplexity gap is within noise)",
    ("TRGL better", "TRGL worse"): "mixed: better on SST-2 but worse in perplexity",
    ("within noise", "TRGL better"): "not shown to be worth it downstream: lower perplexity, but the SST-2 gap is "
    "within noise",
    ("within noise", "within noise"): "not shown to be worth it: both gaps are within noise",
    ("within noise", "TRGL worse"): "not worth it at this scale: end-to-end given the same wall time reaches a lower "
    "perplexity, and the SST-2 gap is within noise",
}


def verdict(result: dict[str, Any]) -> str:
    """The answer, from the paired verdicts against end-to-end at equal wall time (no hard-coded conclusion)."""
    found = comparisons(result)
    ppl_v = found["ppl E2E (equal time)"][1]["verdict"]
    if "best E2E (equal time)" not in found:
        return f"masked-token perplexity against end-to-end at equal wall time: {ppl_v}; no fine-tuning was run."
    acc_v = found["best E2E (equal time)"][1]["verdict"]
    init_v = found["best no pretraining"][1]["verdict"]
    answer = ANSWERS.get((acc_v, ppl_v), "not worth it at this scale: end-to-end given the same wall time fine-tunes "
                                         "better on SST-2")  # fmt: skip
    return (f"against end-to-end at equal wall time, masked-token perplexity at full depth: {ppl_v}; SST-2 accuracy "
            f"(each arm's best depth): {acc_v}. Answer: {answer}. Against no pretraining at all (SST-2, best depths): "
            f"{init_v}.")  # fmt: skip


def learning(result: dict[str, Any]) -> dict[str, Any]:
    """Whether the fine-tunes learn: the untrained weights per depth against the majority class, and how many
    fine-tunes ended at the majority class (within 1 point: the optimisation never left the constant predictor)."""
    d, fts = result["data"]["sst2"], ft_depths(result)
    majority, stderr = d["validation_majority"], math.sqrt(0.25 / d["validation_rows"])
    init = {layers: acc(result, "no pretraining", layers) for layers in fts}
    per_depth = "; ".join(f"{layers} layers {cell(v, 100)}% ({sum(x > majority + 2 * stderr for x in v)} of {len(v)} "
                          "seeds clearly above)" for layers, v in init.items() if v)  # fmt: skip
    stuck = {name: [v for layers in fts for v in acc(result, name, layers)] for name in ARMS}
    count = {name: sum(abs(v - majority) <= 0.01 for v in values) for name, values in stuck.items()}
    sel = (result.get("ft_selection") or {}).get("scores", [])
    sel_stuck = [abs(v - d["select_majority"]) <= 0.01 for s in sel for v in s["accuracy"].values()]
    return {"init_per_depth": per_depth or "–", "majority": 100 * majority, "stderr": 100 * stderr,
            "sel_stuck": sum(sel_stuck), "sel_total": len(sel_stuck),
            "n": d["validation_rows"], "stuck": sum(count.values()), "ft_total": sum(map(len, stuck.values())),
            "stuck_by_arm": ", ".join(f"{name} {count[name]} of {len(stuck[name])}" for name in ARMS)}  # fmt: skip


def findings(result: dict[str, Any]) -> str:
    full, cfg, runs = depths(result)[-1], result["config"], result["runs"]
    walls = {name: [arm(r, name)["train_wall_s"] for r in runs] for name in ARMS[:4]}
    ratio = [t / e for t, e in zip(walls["TRGL"], walls["E2E"])]
    best = {name: best_depth(result, name) for name in ARMS} if ft_depths(result) else {}
    trgl, timed = mean_std(ppl(result, "TRGL", full))[0], mean_std(ppl(result, "E2E (equal time)", full))[0]
    return report.text(NAME, "findings", layers=full, seeds=len(runs), verdict=verdict(result),
                       **{f"ppl_{i}": cell(ppl(result, name, full)) for i, name in enumerate(ARMS[:4])},
                       ppl_ratio=trgl / timed, wall_ratio=mean_std(ratio)[0], steps=cfg["steps"],
                       time_steps=", ".join(str(arm(r, "E2E (equal time)")["optimizer_steps"]) for r in runs),
                       best=", ".join(f"{name} {cell(acc(result, name, layers), 100)}% ({layers} layers)"
                                      for name, layers in best.items()) or "–", **learning(result))  # fmt: skip


def cost_table(result: dict[str, Any]) -> str:
    runs, table = result["runs"], []
    for name in ARMS[:4]:
        steps = sorted({arm(r, name)["optimizer_steps"] for r in runs})
        k = len(arm(runs[0], name)["modules"])
        per_module = "" if name.startswith("E2E") else f" ({steps[0] // k} per module)"
        table.append([name, "/".join(map(str, steps)) + per_module,
                      cell([arm(r, name)["train_wall_s"] for r in runs], digits=0)])  # fmt: skip
    probes = [m["probe"]["probe_wall_s"] for r in runs for m in arm(r, "E2E")["modules"][:1] if m.get("probe")]
    if probes:
        table.append(["E2E probes (all depths at once)", result["config"]["steps"], cell(probes, digits=0)])
    fts = [m["sst2"]["wall_s"] for r in runs for a in r["results"] for m in a["modules"] if m.get("sst2")]
    table.append([f"{len(fts)} SST-2 fine-tunes (with validation)", "–", f"{sum(fts):.0f} in all"])
    return report.table(["arm", "optimizer steps", "train wall time (s), per seed"], table)


def stage_check(result: dict[str, Any]) -> float:
    """Largest relative gap between a saved stage's perplexity and the library's `evaluate()` of its head."""
    return max(abs(m["perplexity"] - m["library_perplexity"]) / m["perplexity"] for run in result["runs"]
               for name in ("TRGL", "VanGL") for m in arm(run, name)["modules"])  # fmt: skip


def tokenizer_text(d: dict[str, Any]) -> str:
    """Where the WordPiece vocabulary came from: a saved one (reproducible), or trained in the run (not)."""
    if d.get("tokenizer"):
        return (f"the lower-cased WordPiece vocabulary of {d['vocabulary']} tokens saved in `{d['tokenizer']}` (its "
                f"serialization's sha256 starts {d['tokenizer_sha256'][:12]}), which the recipe trained on the first "
                "95% of Tiny Shakespeare in the run of 2026-12-07; the benchmark loads it by default, because "
                "WordPiece training is not deterministic across processes (huggingface/tokenizers#1794)")  # fmt: skip
    return (
        f"a lower-cased WordPiece vocabulary of {d['vocabulary']} tokens trained on the first 95% of Tiny "
        "Shakespeare in this run (not reproducible: WordPiece training varies across processes)"
    )


def markdown(result: dict[str, Any]) -> str:
    cfg, env, d = result["config"], result["environment"], result["data"]
    header = report.text(NAME, "header", **cfg, command=env["command"], date_utc=env["date_utc"], torch=env["torch"],
                         transformers=env["transformers"], torch_threads=env["torch_threads"],
                         cpu_count=env["cpu_count"], total_wall_s=result["total_wall_s"],
                         split=arm(result["runs"][0], "TRGL")["split"], n_seeds=len(result["runs"]),
                         taus=arm(result["runs"][0], "TRGL")["taus"],
                         seed_list=", ".join(str(r["seed"]) for r in result["runs"]),
                         quick_note=report.text(NAME, "quick_note") if result["quick"] else "",
                         **{k: v for k, v in d.items() if k not in ("sst2", "tokenizer")},
                         unk=100 * d["sst2"]["validation_unk_share"], selection=selection_text(result),
                         tokenizer_text=tokenizer_text(d),
                         tokens_per_sentence=d["sst2"]["validation_tokens_per_sentence"],
                         ft_depths=", ".join(map(str, ft_depths(result))) or "none",
                         ft_rows=d["sst2"]["train_rows"], val_rows=d["sst2"]["validation_rows"])  # fmt: skip
    lines = [header, "", "## Masked-token perplexity per depth", "", ppl_table(result), "",
             "## SST-2 validation accuracy (%) per depth", "", acc_table(result), "", report.text(NAME, "columns"), "",
             "## Paired comparisons (per seed)", "", paired_table(result), "", "## Findings (computed)", "",
             findings(result), "", "## Cost", "", cost_table(result), "",
             report.text(NAME, "footer", stage_check=stage_check(result)), ""]  # fmt: skip
    return "\n".join(lines)
