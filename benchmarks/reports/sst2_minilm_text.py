"""The SST-2 / MiniLM report's Markdown body (tables from the assembled result; notes from `sst2_minilm_notes`)."""

from __future__ import annotations

from typing import Any

from benchmarks.common import report
from benchmarks.common.sst2_arms import ARMS


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
    return f"""## Protocol

- Data: a stratified (by label, seed 0) sample of {cfg["train_rows"]:,} rows of `sst2/train.parquet` (GLUE train:
  phrases and sentences, {num(cfg["train_token_length_mean"], 1)} tokens on average), the same sample for every arm
  and seed; validation = `sst2/validation.parquet` ({cfg["validation_rows"]} sentences, used for every choice); test =
  `sst2/test.parquet` ({cfg["test_rows"]:,} sentences, reported only).
- Model: {cfg["model"]}: `BertForSequenceClassification.from_pretrained(path, num_labels=2)`, its tokenizer,
  max_length {cfg["max_length"]}, dynamic padding, `train_sampling_strategy="group_by_length"`, batch
  {cfg["batch_size"]}, eval batch {cfg["eval_batch_size"]}, AdamW lr {cfg["lr"]:g} (LoRA arms {cfg["lora_lr"]:g}, the
  usual LoRA learning rate), weight decay 0.01, linear decay, max_grad_norm 1.0, {cfg["epochs"]:g} epoch (per module
  for the module-wise arms). Seeds {", ".join(map(str, cfg["seeds"]))}: the seed sets the new classifier / heads'
  initialisation and the data order; the data sample stays fixed.
- Module-wise arms: `TRGLModel.from_base(base, TRGLConfig(num_modules=K, ...))`, K in {cfg["ks"]}; heads: mean
  pooling (`aux_head="mean"`: the mask-weighted mean of the token states, LayerNorm, a new linear layer; the default
  for a pretrained text classifier, this library's extension) or native (a copy of the pretrained pooler on [CLS] +
  dropout + a new classifier per module, the paper's choice for transformers); `trgl_mode="sequential"`,
  `trgl_prefix_cache="never"` (the frozen prefix is recomputed under no_grad on length-grouped batches: the cache
  would pad every row to the longest training sentence).
- Arms: **E2E** (plain `transformers.Trainer`); **E2E + GC** (the same with `gradient_checkpointing=True`); **LoRA
  E2E** (`peft.get_peft_model(base, LoraConfig({", ".join(f"{k}={v!r}" for k, v in cfg["lora"].items())}))`, plain
  Trainer); **VanGL** (`use_transport=False`, heads at the modules' lr); **TRGL (paper)** (`tau=10`,
  `tau_schedule="constant"`, `tau_scale="absolute"`, `trgl_head_lr_multiplier=1.0`, `trgl_head_warmup_steps=0`: the
  paper's transformer setting); **TRGL (defaults)** (`TRGLConfig(num_modules=K)` and no TRGL-specific training
  argument: what a user gets, i.e. mean heads, heads at lr 1e-3, relative tau = 1000 halved on the first half of
  the modules); **TRGL + LoRA** (the LoRA-wrapped base of LoRA E2E given to `TRGLModel.from_base`, library
  defaults, lr {cfg["lora_lr"]:g}); **VanGL (mean heads)** (VanGL with the defaults' heads: what the transport term
  adds with the same heads); **TRGL (defaults, native heads)** and **TRGL + LoRA (native heads)** (`aux_head="native"`,
  the library defaults before the head was chosen on validation). VanGL and TRGL (paper) keep the native heads.
- Accuracy: every module's head is evaluated on validation and test (the early-exit curve); "last" is module K,
  "best" is the module with the highest validation accuracy (its test accuracy is reported).
- Memory: one training step per phase (zero_grad, forward, backward, grad clipping, the Trainer's AdamW step) on one
  fixed batch of {cfg["batch_size"]} x {cfg["max_length"]} tokens padded to max_length, after a warm-up step that
  creates the optimizer state, at the allocator level (`torch.profiler(profile_memory=True)`:
  weights + optimizer state + batch + the step's peak of live allocations); the maximum over the phases of a
  sequential run; "without frozen weights" subtracts the weights that do not train in that phase (a
  deployment that loads only the module being trained and its prefix in a cheaper form). Measured once per arm x K
  (seed {cfg["memory_seed"]}): it does not depend on the seed. E2E + GC is measured with checkpointing enabled on
  the model in training mode.
- Frozen probe: the frozen pretrained MiniLM up to layer d, attention-mask-weighted mean of the token states, an
  L2-regularised logistic regression (full-batch L-BFGS on standardised features; L2 weight chosen on validation
  among 1e-4, 1e-3, 1e-2, 1e-1) trained on the same training rows.
- Wall times: 1 torch thread per run, two runs at a time on 2 CPU cores shared with other jobs: indicative only."""


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
    return (
        "Run files renamed when the defaults changed to mean heads: "
        + pairs
        + ': the `trgl_mean` runs gave `aux_head="mean"` explicitly with the other defaults, i.e. today\'s defaults; '
        "the earlier `trgl_defaults` / `trgl_lora` runs had native heads. "
    )


def body(result: dict[str, Any], sweep_table: str) -> str:
    from .sst2_minilm_notes import notes

    cfg, env = result["config"], result["environment"]
    defaults_env = result.get("defaults_run_environment") or {}
    trgl_lora = next((r for r in result["summary"] if r["arm"] == "lora_e2e"), None)
    lora_note = ""
    if trgl_lora and trgl_lora.get("trainable"):
        t = trgl_lora["trainable"]
        lora_note = (
            f"LoRA E2E trains {t['trainable_parameters']:,} of {t['total_parameters']:,} parameters: "
            + ", ".join(f"`{p}`" for p in t["trainable_name_patterns"])
            + " (the pooler's dense layer only gets adapters, as a `dense` target; the classifier trains fully "
            "through `modules_to_save`)."
        )
    parts = [
        "# SST-2, pretrained MiniLM-L6: TRGL vs VanGL, end-to-end, gradient checkpointing and LoRA",
        "",
        "```bash",
        "python -m benchmarks.text_sst2_minilm --workers 2    # every run (one JSON each, resumable), then the report",
        "python -m benchmarks.text_sst2_minilm --report-only  # this report again from the run files",
        "```",
        "",
        f"This file was written by `{result['command']}`. Library commit when each run ended (the library was "
        "being edited meanwhile): "
        + "; ".join(f"`{c}`: {', '.join(ids)}" for c, ids in (result.get("library_commits") or {}).items())
        + ".",
        "",
        f"Report built {env['date_utc']}; torch {env['torch']}, transformers {env['transformers']}, datasets "
        f"{env['datasets']}, Python {env['python']}, {env['cpu']} ({env['cpu_count']} cores shared with other jobs). "
        f"Uncommitted library changes when the TRGL (defaults) runs ran: "
        f"{defaults_env.get('git_uncommitted_trgl_hf') or 'none'}. "
        + renamed_note(result.get("renamed_runs") or {})
        + "Sum of the runs' wall times: "
        f"{result['total_run_wall_s'] / 3600:.1f} h."
        + (" **Quick smoke run: the numbers mean nothing.**" if result["quick"] else ""),
        "",
        protocol(cfg),
        "",
        sweep_table,
        "",
        "## Summary (mean ± std over seeds; memory from seed 0)",
        "",
        summary_table(result["summary"]),
        "",
        "## Paired comparisons over seeds (same seed: same data order and classifier initialisation)",
        "",
        paired_table(result["paired"]),
        "",
        "## Targets (issue 18)",
        "",
        targets_table(result["targets"]),
        "",
        notes(result),
        "",
        "## Early exit: test accuracy of every module's head (mean ± std over seeds)",
        "",
        f"![early exit]({result.get('figure') or 'sst2_minilm.png'})",
        "",
        early_exit_table(result["summary"], result.get("probe")),
        "",
        "## Peak training memory (one step per phase, allocator level)",
        "",
        memory_table(result["summary"]),
        "",
        lora_note,
        "",
        "## Every run",
        "",
        runs_table(result["runs"]),
        "",
    ]
    return "\n".join(parts)
