"""The SST-2 / MiniLM report's Markdown body: tables from the assembled result, prose from `templates/sst2_minilm.md`
(notes from `sst2_minilm_notes`)."""

from __future__ import annotations

from typing import Any

from benchmarks.common import report
from benchmarks.common.sst2_arms import ARMS

NAME = "sst2_minilm"


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def num(x: float | None, digits: int = 0) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def label(arm: str) -> str:
    return ARMS[arm]["label"]


def protocol(cfg: dict[str, Any]) -> str:
    lora = ", ".join(f"{k}={v!r}" for k, v in cfg["lora"].items())
    return report.text(NAME, "protocol", **{**cfg, "train_token_length_mean": num(cfg["train_token_length_mean"], 1),
                       "seeds": ", ".join(map(str, cfg["seeds"])), "lora": lora})  # fmt: skip


def summary_table(rows) -> str:
    out = []
    for r in rows:
        out.append([
            r["label"], r["num_modules"] or "–", len(r["seeds"]),
            pm(r["last_module_test_accuracy_mean"], r["last_module_test_accuracy_std"]),
            pm(r["best_module_test_accuracy_mean"], r["best_module_test_accuracy_std"]),
            pm(r["last_module_validation_accuracy_mean"], r["last_module_validation_accuracy_std"]),
            num(r["peak_memory_mib"]), num(r["peak_memory_without_frozen_weights_mib"]),
            num(r["peak_saved_activations_mib"]), num(r["train_wall_s_mean"]), num(r["eval_wall_s_mean"]),
        ])  # fmt: skip
    return report.table(
        ["arm", "K", "seeds", "last module test (%)", "best-by-val module test (%)", "last module val (%)",
         "peak MiB", "peak MiB w/o frozen weights", "saved activations MiB", "train s", "eval s"], out)  # fmt: skip


def paired_table(pairs) -> str:
    out = []
    for p in pairs:
        ci = p["ci95"]
        out.append([
            f"{label(p['a'])} − {label(p['b'])}", p["num_modules"], p["metric"].split("_module")[0],
            ", ".join(f"{d:+.1f}" for d in p["differences"]), f"{p['mean']:+.2f}",
            "–" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]",
        ])  # fmt: skip
    return report.table(
        ["difference (test accuracy, points)", "K", "module", "per seed", "mean", "95% t-interval"], out
    )


def targets_table(targets) -> str:
    return report.table(
        ["target", "K", "met", "by how much"],
        [[t["target"], t["num_modules"], "met" if t["met"] else "**not met**", t["detail"]] for t in targets],
    )


def early_exit_table(rows, probe) -> str:
    depths = [d["encoder_layers"] for d in probe["depths"]] if probe else list(range(1, 7))
    out = []
    if probe:
        out.append(["frozen probe (test)", "–", *[pct(d["test_accuracy"]) for d in probe["depths"]]])
        out.append(["frozen probe (validation)", "–", *[pct(d["validation_accuracy"]) for d in probe["depths"]]])
    for r in rows:
        if r["num_modules"] is None:
            continue
        cells = {m["encoder_layers"]: pm(m["test_accuracy_mean"], m["test_accuracy_std"]) for m in r["per_module"]}
        out.append([r["label"], r["num_modules"], *[cells.get(d, "") for d in depths]])
    return report.table(
        ["test accuracy (%) at depth", "K", *[f"{d} layer{'s' if d > 1 else ''}" for d in depths]], out
    )


def memory_table(rows) -> str:
    out = []
    for r in rows:
        if r["peak_memory_mib"] is None:
            continue
        t = r.get("trainable") or {}
        out.append([
            r["label"], r["num_modules"] or "–", num(r["peak_memory_mib"]),
            num(r["peak_memory_without_frozen_weights_mib"]),
            num(r["peak_saved_activations_mib"]),
            f"{t.get('trainable_parameters', 0):,} / {t.get('total_parameters', 0):,}",
        ])  # fmt: skip
    return report.table(["arm", "K", "peak MiB (max over phases)", "w/o frozen weights", "saved activations MiB",
                         "requires_grad after training / total parameters (all heads)"], out)  # fmt: skip


def runs_table(runs) -> str:
    out = [[
        r["label"], r.get("num_modules") or "–", r["seed"],
        " / ".join(pct(m["validation_accuracy"]) for m in r["modules"]),
        " / ".join(pct(m["test_accuracy"]) for m in r["modules"]),
        r["best_module_by_validation"], r["train_steps"], num(r["train_wall_s"]), num(r["eval_wall_s"]),
    ] for r in runs]  # fmt: skip
    return report.table(["arm", "K", "seed", "val. per module (%)", "test per module (%)", "best module",
                         "steps", "train s", "eval s"], out)  # fmt: skip


def renamed_note(renamed: dict[str, str]) -> str:
    """Run files renamed when the library's defaults changed (their settings were the new defaults already)."""
    if not renamed:
        return ""
    pairs = ", ".join(f"{new} (ran as {old})" for new, old in sorted(renamed.items()))
    return report.text(NAME, "renamed_note", pairs=pairs) + " "


def lora_note(result: dict[str, Any]) -> str:
    trgl_lora = next((r for r in result["summary"] if r["arm"] == "lora_e2e"), None)
    if not (trgl_lora and trgl_lora.get("trainable")):
        return ""
    t = trgl_lora["trainable"]
    patterns = ", ".join(f"`{p}`" for p in t["trainable_name_patterns"])
    return report.text(NAME, "lora_note", trainable=t["trainable_parameters"], total=t["total_parameters"],
                       patterns=patterns)  # fmt: skip


def body(result: dict[str, Any], sweep_table: str) -> str:
    """The whole report: `templates/sst2_minilm.md`'s `body`, filled with the tables and notes."""
    from .sst2_minilm_notes import notes

    env = result["environment"]
    defaults_env = result.get("defaults_run_environment") or {}
    commits = "; ".join(f"`{c}`: {', '.join(ids)}" for c, ids in (result.get("library_commits") or {}).items())
    return (
        report.text(
            NAME,
            "body",
            command=result["command"],
            library_commits=commits,
            date_utc=env["date_utc"],
            torch=env["torch"],
            transformers=env["transformers"],
            datasets=env["datasets"],
            python=env["python"],
            cpu=env["cpu"],
            cpu_count=env["cpu_count"],
            uncommitted=defaults_env.get("git_uncommitted_trgl_hf") or "none",
            renamed_note=renamed_note(result.get("renamed_runs") or {}),
            wall_h=result["total_run_wall_s"] / 3600,
            quick_note=" " + report.text(NAME, "quick_note") if result["quick"] else "",
            protocol=protocol(result["config"]),
            sweep_table=sweep_table,
            summary_table=summary_table(result["summary"]),
            paired_table=paired_table(result["paired"]),
            targets_table=targets_table(result["targets"]),
            notes=notes(result),
            figure=result.get("figure") or "sst2_minilm.png",
            early_exit_table=early_exit_table(result["summary"], result.get("probe")),
            memory_table=memory_table(result["summary"]),
            lora_note=lora_note(result),
            runs_table=runs_table(result["runs"]),
        )
        + "\n"
    )
