"""The accuracy_cifar10 report: mean and t-based 95% interval over seeds, paired differences, tables and plots."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.common import report

# Two-sided 95% quantiles of Student's t for 1..10 degrees of freedom (few seeds: a normal interval is too narrow).
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]


def mean_and_interval(values: list[float]) -> dict:
    """Mean, half-width of the t-based 95% interval (nan for one value) and count."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    half = T_975[min(n - 2, len(T_975) - 1)] * values.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
    return {"mean": float(values.mean()), "ci95": float(half), "n": n}


def group_name(row: dict, several_taus: bool) -> str:
    name = f"{row['arm']}/{row['mode']}"
    return f"{name} tau={row['tau']:g}" if several_taus and row["arm"] == "trgl" else name


def summarise(rows: list[dict]) -> dict:
    several_taus = len({row.get("tau") for row in rows if row["arm"] == "trgl"}) > 1
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(group_name(row, several_taus), []).append(row)
    summary = {}
    for name, group in groups.items():
        entry = {}
        for key in ("last_test", "best_by_validation_test"):
            entry[key] = mean_and_interval([r[key] * 100 for r in group])
        entry["per_module_test_mean"] = list(np.mean([r["test"] for r in group], axis=0) * 100)
        entry["last_validation_mean"] = float(np.mean([r["validation"][-1] for r in group]) * 100)
        entry["seconds_mean"] = float(np.mean([r["seconds"] for r in group]))
        entry["tau"] = group[0].get("tau")
        summary[name] = entry
    summary.update(paired_differences(rows))
    return summary


def paired_differences(rows: list[dict]) -> dict:
    """TRGL minus VanGL per seed (same seed: same initialisation and data order), mean and t-based 95% interval."""
    by_key = {(r["arm"], r["mode"], r["seed"], r.get("tau")): r for r in rows}
    differences: dict[str, dict] = {}
    for (arm, mode, seed, tau), trgl in by_key.items():
        vangl = by_key.get(("vangl", mode, seed, None))
        if arm != "trgl" or vangl is None:
            continue
        name = f"trgl - vangl/{mode} tau={tau:g}"
        entry = differences.setdefault(name, {"last_test": [], "best_by_validation_test": []})
        for key in entry:
            entry[key].append((trgl[key] - vangl[key]) * 100)
    return {
        name: {"paired": True, **{key: mean_and_interval(values) for key, values in entry.items()}}
        for name, entry in differences.items()
    }


def merge(payloads: list[dict], name: str) -> dict:
    """One payload holding every row of `payloads` (the options of the first, renamed)."""
    merged = dict(payloads[0])
    merged["options"] = {**payloads[0]["options"], "name": name}
    merged["command"] = " ; ".join(dict.fromkeys(payload["command"] for payload in payloads))
    merged["rows"] = [row for payload in payloads for row in payload["rows"]]
    return merged


def render(payload: dict, results: Path) -> None:
    """Write the JSON, the Markdown table (mean and t-based 95% interval over seeds) and the per-module plot."""
    options = argparse.Namespace(**payload["options"])
    command = payload["command"]
    summary = payload["summary"] = summarise(payload["rows"])
    report.write_atomically(results / f"{options.name}.json", json.dumps(payload, indent=2))
    lines = [f"# {options.name}", "", f"Command: `{command}`", "",
             "| arm / mode | last module test % (mean ± 95% CI) | best-by-validation test % | last module "
             "validation % | test % per module | seconds |", "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, entry in summary.items():
        last, best = entry["last_test"], entry["best_by_validation_test"]
        if entry.get("paired"):
            lines.append(f"| {name} (paired by seed) | {last['mean']:+.2f} ± {last['ci95']:.2f} (n={last['n']}) | "
                         f"{best['mean']:+.2f} ± {best['ci95']:.2f} | | | |")  # fmt: skip
            continue
        per_module = " / ".join(f"{v:.1f}" for v in entry["per_module_test_mean"])
        lines.append(
            f"| {name} | {last['mean']:.2f} ± {last['ci95']:.2f} (n={last['n']}) | {best['mean']:.2f} ± "
            f"{best['ci95']:.2f} | {entry['last_validation_mean']:.1f} | {per_module} | {entry['seconds_mean']:.0f} |"
        )
    report.write_atomically(results / f"{options.name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    plot_per_module(summary, options, results / f"{options.name}.png")
    if len({entry["tau"] for entry in summary.values() if entry.get("tau") is not None}) > 1:
        plot_tau_sensitivity(summary, options, results / f"{options.name}_tau.png")


def plot_per_module(summary: dict, options: argparse.Namespace, path: Path) -> None:

    plt = report.pyplot()

    figure, axis = plt.subplots(figsize=(5.5, 3.5))
    for name, entry in summary.items():
        if entry.get("paired"):
            continue
        values = entry["per_module_test_mean"]
        axis.plot(range(1, len(values) + 1), values, marker="o", label=name)
    axis.set_xlabel("module")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(f"CIFAR-10, {options.train_size} images, ResNet-{options.depth}")
    axis.legend(fontsize=7)
    report.save_figure(figure, path)


def plot_tau_sensitivity(summary: dict, options: argparse.Namespace, path: Path) -> None:
    """Last-module test and validation accuracy of TRGL against tau (log scale), VanGL as horizontal lines."""
    plt = report.pyplot()

    trgl = sorted((e["tau"], e) for e in summary.values() if e.get("tau") is not None and not e.get("paired"))
    figure, axis = plt.subplots(figsize=(5.5, 3.5))
    taus = [tau for tau, _ in trgl]
    axis.plot(taus, [e["last_test"]["mean"] for _, e in trgl], marker="o", label="TRGL last module, test")
    axis.plot(taus, [e["last_validation_mean"] for _, e in trgl], marker="s", ls="--", label="TRGL last, validation")
    for name, entry in summary.items():
        if name.startswith(("vangl", "e2e")):
            axis.axhline(entry["last_test"]["mean"], color="grey" if name.startswith("vangl") else "black",
                         ls=":", label=f"{name} last module, test")  # fmt: skip
    axis.set_xscale("log")
    axis.set_xlabel("tau")
    axis.set_ylabel("accuracy (%)")
    axis.set_title(f"tau sensitivity, K={options.modules}, {options.train_size} images, ResNet-{options.depth}")
    axis.legend(fontsize=7)
    report.save_figure(figure, path)
