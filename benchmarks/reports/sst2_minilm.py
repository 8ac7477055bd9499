"""The SST-2 / MiniLM report: Markdown (sweep, summary, paired comparisons, targets, early exit, memory, runs) and the
early-exit figure (test accuracy against depth, with the frozen probe and the end-to-end references)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import report
from benchmarks.common.sst2_arms import ARMS, SWEEP

from .sst2_minilm_stats import TIE_POINTS, assemble, sweep_rows, sweep_winner  # noqa: F401  (assemble: re-export)

NAME = "sst2_minilm"
MODULE_WISE = [a for a, s in ARMS.items() if s["kind"] == "trgl"]
COLORS = {
    "vangl": "tab:gray",
    "trgl_paper": "tab:orange",
    "trgl_defaults": "tab:blue",
    "trgl_lora": "tab:green",
    "vangl_mean": "tab:brown",
    "trgl_native": "tab:purple",
    "trgl_lora_native": "tab:olive",
}


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def sweep_section(runs: dict[str, dict[str, Any]]) -> str:
    """The sweep's table (K = 3, seed 0) and its winner, from the run files."""
    rows = sweep_rows(runs)
    winner = sweep_winner(rows)
    lines = [report.text(NAME, "sweep_intro", tie_points=TIE_POINTS), ""]
    table = []
    for r in rows:
        s = r["settings"]
        val = [m["validation_accuracy"] for m in r["modules"]]
        table.append([
            r["name"] + (" **(winner)**" if r["name"] == winner else ""),
            f"{s['trgl_head_lr_multiplier']:g}", s["trgl_head_warmup_steps"], s["tau_scale"], f"{s['tau']:g}",
            " / ".join(pct(v) for v in val), pct(sum(val) / len(val)), pct(val[-1]),
            " / ".join(pct(m["test_accuracy"]) for m in r["modules"]), f"{r['train_wall_s']:.0f}",
        ])  # fmt: skip
    lines.append(report.table(
        ["candidate", "head lr x", "head warm-up steps", "tau_scale", "tau", "validation acc. per module (%)",
         "mean val. (%)", "last val. (%)", "test acc. per module (%)", "train s"], table))  # fmt: skip
    missing = [n for n in SWEEP if n not in {r["name"] for r in rows}]
    lines += ["", report.text(NAME, "sweep_winner", winner=winner) if winner else report.text(NAME, "sweep_none")]
    if missing:
        lines.append(report.text(NAME, "sweep_missing", missing=", ".join(missing)))
    return "\n".join(lines)


def head_choice_section(result: dict[str, Any]) -> str:
    """Native against mean-pooling heads with the sweep's winner (seed 0, validation): the choice of the default."""
    runs = {(r["arm"], r.get("num_modules"), r["seed"]): r for r in result["runs"]}
    table = []
    for k in result["config"]["ks"]:
        for arm, head in (("trgl_native", "native ([CLS] through the pretrained pooler)"), ("trgl_defaults", "mean")):
            r = runs.get((arm, k, 0))
            if r is None:
                continue
            val = [m["validation_accuracy"] for m in r["modules"]]
            table.append([k, head, " / ".join(pct(v) for v in val), pct(sum(val) / len(val)), pct(val[-1])])
    if not table:
        return ""
    table_text = report.table(
        ["K", "heads", "validation acc. per module (%)", "mean val. (%)", "last val. (%)"], table
    )
    return report.text(NAME, "head_choice", table=table_text)


def plot(result: dict[str, Any], out_dir: Path) -> str | None:
    """Test accuracy against depth (encoder layers): module-wise arms (mean over seeds), the frozen probe, and the
    end-to-end references as horizontal lines; one panel per K."""
    try:
        plt = report.pyplot()
    except ImportError:  # pragma: no cover
        return None
    ks = result["config"]["ks"] or [None]
    fig, axes = plt.subplots(1, len(ks), figsize=(6 * len(ks), 4.5), squeeze=False)
    probe = result.get("probe")
    rows = result["summary"]
    for ax, k in zip(axes[0], ks):
        if probe:
            d = [x["encoder_layers"] for x in probe["depths"]]
            ax.plot(d, [100 * x["test_accuracy"] for x in probe["depths"]], "k--o", ms=4, label="frozen probe")
        for arm, style in (("e2e", ("r", ":")), ("e2e_gc", None), ("lora_e2e", ("m", "-."))):
            row = next((r for r in rows if r["arm"] == arm), None)
            if row and style:
                ax.axhline(100 * row["last_module_test_accuracy_mean"], ls=style[1], color=style[0],
                           label=f"{row['label']} ({pct(row['last_module_test_accuracy_mean'])})")  # fmt: skip
        for arm in MODULE_WISE:
            row = next((r for r in rows if r["arm"] == arm and r["num_modules"] == k), None)
            if row:
                x = [m["encoder_layers"] for m in row["per_module"]]
                y = [100 * m["test_accuracy_mean"] for m in row["per_module"]]
                ax.plot(x, y, "-o", color=COLORS[arm], ms=5, label=row["label"])
        ax.set_title(f"K = {k}" if k else "")
        ax.set_xlabel("depth (encoder layers)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    path = out_dir / "sst2_minilm.png"
    report.save_figure(fig, path)
    return path.name


def markdown(result: dict[str, Any]) -> str:
    from .sst2_minilm_text import body

    return body(result, sweep_table=sweep_section_from_result(result) + "\n\n" + head_choice_section(result))


def sweep_section_from_result(result: dict[str, Any]) -> str:
    runs = {f"sweep_{r['name']}_K3_s0": r for r in result["sweep"]}
    return sweep_section(runs)
