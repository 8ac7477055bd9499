"""The SST-2 / MiniLM report (Markdown): accuracy per module, summary, memory per phase, wall time, training logs."""

from __future__ import annotations

from typing import Any


def markdown(result: dict[str, Any]) -> str:
    cfg, env = result["config"], result["environment"]
    lines = [
        "# SST-2, pretrained MiniLM-L6 (all-MiniLM-L6-v2): sequential TRGL vs VanGL vs end-to-end",
        "",
        "```bash",
        env["command"],
        "```",
        "",
        f"Run on {env['date_utc']} with torch {env['torch']}, transformers {env['transformers']}, "
        f"{env['torch_threads']} torch thread(s) on a machine with {env['cpu_count']} CPU cores shared with other "
        f"jobs (load average {env['load_average_at_start'][0]:.2f} at start), so wall times are indicative only. "
        f"Total run time {result['total_wall_s']:.0f} s.",
        "",
        f"Data: `sst2/train_sentences.parquet` (6,920 sentences) split stratified with seed {cfg['seed']} into "
        f"{cfg['validation_size']} validation sentences (model selection) and a stratified subsample of "
        f"{cfg['train_size']} training sentences (of the 6,920 - {cfg['validation_size']} remaining, reduced for CPU "
        f"time); test = `sst2/test.parquet` ({cfg['test_rows']} sentences). max_length {cfg['max_length']} "
        f"(dynamic padding), batch {cfg['batch_size']}, AdamW (the Trainer default, `{cfg['optim']}`) lr "
        f"{cfg['lr']}, weight decay 0.01, linear decay, {cfg['epochs']:g} epoch(s) per module for TRGL/VanGL and "
        f"{cfg['epochs']:g} epoch(s) for E2E, seed {cfg['seed']}; all methods start from the same weights. "
        "K = 3 modules of 2 encoder layers (module 1 also holds the embeddings), each with a native head (a copy of "
        'the pretrained pooler + dropout + classifier); `trgl_mode="sequential"`. E2E = the same code path with '
        "K = 1 and no transport term.",
        "",
        f'Batches: `train_sampling_strategy="{cfg["sampling"]}"` and `trgl_prefix_cache="{cfg["prefix_cache"]}"`'
        f" for every method. Training sentences have {cfg['train_token_length_mean']:.1f} tokens on average "
        f"(longest {cfg['train_token_length_max']}). The library's prefix cache (`auto` picks it for this pipeline) "
        "stores the frozen prefix's outputs padded to the longest training sentence, so modules 2-3 would train on "
        f"{cfg['train_token_length_max']}-token rows"
        + (
            "; recomputing the frozen prefix under no_grad on length-grouped batches is cheaper here (the same "
            "updates as with the cache for the same batches, as `tests/test_trainer_transformers.py` checks)."
            if cfg["prefix_cache"] == "never"
            else "."
        ),
        "",
        result["tau_note"],
        "",
        "## Accuracy per module",
        "",
        "| method | module | encoder layers | validation accuracy | test accuracy |",
        "| --- | --- | --- | --- | --- |",
    ]
    for run in result["results"]:
        for m in run["modules"]:
            lines.append(
                f"| {run['method']} | {m['module']} | {m['encoder_layers']} | "
                f"{m['validation_accuracy']:.4f} | {m['test_accuracy']:.4f} |"
            )
    lines += [
        "",
        "## Summary",
        "",
        "| method | best module (by validation) | its validation accuracy | its test accuracy | last module test "
        "accuracy | train wall time (s) | peak training memory (MiB) | peak without frozen weights (MiB) | "
        "saved activations (MiB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["results"]:
        mem = (
            f"{r['peak_memory_mib']:.1f} | {r['peak_memory_without_frozen_weights_mib']:.1f} | "
            f"{r['peak_saved_activations_mib']:.1f}"
            if "peak_memory_mib" in r
            else "n/a | n/a | n/a"
        )
        lines.append(
            f"| {r['method']} | {r['best_module_by_validation']} | {r['best_module_validation_accuracy']:.4f}"
            f" | {r['best_module_test_accuracy']:.4f} | {r['last_module_test_accuracy']:.4f} | "
            f"{r['train_wall_s']:.0f} | {mem} |"
        )
    lines += [
        "",
        "Reference (from the data README, not measured here): a frozen MiniLM, mean-pooled, with a logistic-regression"
        " probe trained on all 6,920 `train_sentences` scores 81.9 % on the same test set.",
        "",
    ]
    if any("memory_phases" in r for r in result["results"]):
        lines += [
            "## Peak training memory per phase",
            "",
            "Measured at the allocator level on one training step of each phase (one fixed batch of "
            f"{cfg['batch_size']} x {cfg['max_length']} tokens, padded to max_length, after a warm-up step), with "
            "`torch.profiler(profile_memory=True)`: peak = bytes alive before the step (all weights and buffers, "
            "optimizer state, the batch) + the maximum of the running sum of the step's allocations minus their "
            "frees. The step is the trainer's: zero_grad - forward (for modules 2-3 "
            + (
                "from the cached output of the frozen prefix"
                if any(r.get("memory_prefix_cached") for r in result["results"])
                else "the frozen prefix under no_grad, then the trained module"
            )
            + ") - backward - gradient clipping - "
            "optimizer step. 'Saved activations' are the "
            "distinct non-parameter storages autograd keeps for backward (`saved_tensors_hooks`). 'Without frozen "
            "weights' subtracts the weights of the frozen modules, which a sequential run could keep on disk. Not "
            "process RSS.",
            "",
            "| method | phase (module) | weights, all modules | trainable weights | optimizer state | batch | saved "
            "activations | step peak above baseline | peak | peak without frozen weights |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in result["results"]:
            for p in r.get("memory_phases", []):
                lines.append(
                    f"| {r['method']} | {p['module']} | {p['weights_all_modules_mib']:.1f} | "
                    f"{p['trainable_weights_mib']:.1f} | {p['optimizer_state_mib']:.1f} | {p['batch_mib']:.2f} | "
                    f"{p['saved_activations_mib']:.1f} | {p['step_peak_above_baseline_mib']:.1f} | "
                    f"{p['peak_mib']:.1f} | {p['peak_without_frozen_weights_mib']:.1f} |"
                )
        v = result["memory_validation"]
        lines += [
            "",
            "All sizes in MiB. Check of the measurement on known cases (`benchmarks/common/memory.py`): "
            + "; ".join(
                f"{name}: measured peak {case.get('measured_peak_bytes', case.get('measured_step_peak_bytes')):,} B, "
                f"expected {case.get('expected_peak_bytes', case.get('expected_step_peak_bytes')):,} B"
                for name, case in v.items()
            )
            + ".",
            "",
        ]
    lines += [
        "## Wall time",
        "",
        "| method | train (s) | evaluation of validation + test (s) | optimizer steps |",
        "| --- | --- | --- | --- |",
    ]
    for r in result["results"]:
        lines.append(f"| {r['method']} | {r['train_wall_s']:.0f} | {r['eval_wall_s']:.0f} | {r['train_steps']} |")
    lines += [
        "",
        "## Training logs",
        "",
        "Task loss (cross-entropy of the module's head) and transport cost (sum over the module's residual branches "
        "of mean(r ** 2), before the 1 / (2 tau_k) weight) averaged over the first and the last logging window of "
        "each phase (the trainer logs every 20 steps). ln 2 = 0.6931 is the loss of a head that ignores its input.",
        "",
        "| method | module | task loss, first window | task loss, last window | transport, first window | transport, "
        "last window |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["results"]:
        for k in range(1, r["num_modules"] + 1):
            logs = [e for e in r["train_log"] if f"module_{k}_task_loss" in e]
            if logs:
                lines.append(
                    f"| {r['method']} | {k} | {logs[0][f'module_{k}_task_loss']:.4f} | "
                    f"{logs[-1][f'module_{k}_task_loss']:.4f} | {logs[0][f'module_{k}_transport']:.3f} | "
                    f"{logs[-1][f'module_{k}_transport']:.3f} |"
                )
    balance = result.get("data_label_balance")
    if balance:
        lines += [
            "",
            'A head that predicts "positive" for every sentence scores '
            f"{balance['validation_positive_fraction']:.4f} on validation and "
            f"{balance['test_positive_fraction']:.4f} on test: modules at exactly these accuracies predict a single "
            "class.",
        ]
    lines += ["", "Raw numbers: `sst2_minilm.json`.", ""]
    return "\n".join(lines)
