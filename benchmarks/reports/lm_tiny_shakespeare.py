"""The Tiny Shakespeare report: per-module perplexities (Markdown) and the plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import report
from benchmarks.common.env import log


def plot(result: dict[str, Any], path: Path) -> None:
    plt = report.pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colors = {}
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    for ax, split in zip(axes, ("validation", "test")):
        for r in result["results"]:
            layers = [m["layers"] for m in r["modules"]]
            values = [m[f"{split}_perplexity"] for m in r["modules"]]
            if r["method"] == "E2E":
                ax.axhline(values[0], color="black", linewidth=0.8, linestyle=":")
                ax.plot(layers, values, "*", markersize=15, color="black", label="E2E (all layers)")
                continue
            kind, k = r["method"].split()
            color = colors.setdefault(k, palette[len(colors) % len(palette)])
            style = "-o" if kind == "TRGL" else "--s"
            ax.plot(layers, values, style, color=color, alpha=0.9 if kind == "TRGL" else 0.6, label=r["method"])
        ax.set_title(f"{split}")
        ax.set_xlabel("layers below the module's head")
        ax.set_xticks(range(1, result["config"]["n_layer"] + 1))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("perplexity per character")
    axes[1].legend(loc="upper right", fontsize=8)
    cfg = result["config"]
    fig.suptitle(
        f"Tiny Shakespeare, char-level GPT-2 ({cfg['n_layer']} layers x {cfg['n_embd']}): perplexity per "
        f"module, {cfg['steps']} steps per module (E2E: {cfg['steps']} steps)"
    )
    report.save_figure(fig, path)


def markdown(result: dict[str, Any]) -> str:
    cfg, env = result["config"], result["environment"]
    d = result["data"]
    lines = [
        "# Tiny Shakespeare, character-level GPT-2 from scratch: sequential TRGL vs VanGL vs end-to-end",
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
        f"Data: `tiny_shakespeare/input.txt`, 90/5/5 split by character, {cfg['vocab_size']}-character vocabulary, "
        f"non-overlapping blocks of {cfg['block_size']} characters: {d['train']['blocks']} train, "
        f"{d['validation']['blocks']} validation, {d['test']['blocks']} test blocks. Model: GPT-2 with "
        f"{cfg['n_layer']} layers, n_embd {cfg['n_embd']}, {cfg['n_head']} heads, no dropout, untied embeddings, "
        f"{cfg['parameters']:,} parameters, trained from scratch (same initial weights for every method). "
        f'Training: {cfg["steps"]} optimizer steps per module (TRGL/VanGL, `trgl_mode="sequential"`, frozen prefix '
        f"cached) and {cfg['steps']} steps for E2E (the same code path with K = 1), batch {cfg['batch_size']}, AdamW "
        f"(`{cfg['optim']}`) lr {cfg['lr']}, weight decay 0.01, cosine schedule with {cfg['warmup_steps']} warm-up "
        f"steps, seed {cfg['seed']}. tau = {cfg['tau']:g} (the library default, `halves` schedule: tau / 2 for the "
        "first half of the modules), not tuned. Loss = next-character cross-entropy in nats; perplexity = exp(loss). "
        "These are short runs, far from convergence."
        + (
            ""
            if 4 in cfg["num_modules"]
            else " K = 4 (one layer per module, `--num-modules 2 4`) was left out to "
            "keep the run under ~15 minutes on 2 shared CPU cores."
        ),
        "",
        "## Per module",
        "",
        "| method | module | layers | validation loss | validation perplexity | test loss | test perplexity |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["results"]:
        for m in r["modules"]:
            lines.append(
                f"| {r['method']} | {m['module']} | {m['layers']} | {m['validation_loss']:.4f} | "
                f"{m['validation_perplexity']:.3f} | {m['test_loss']:.4f} | {m['test_perplexity']:.3f} |"
            )
    lines += [
        "",
        "## Summary",
        "",
        "| method | last module test perplexity | best module (by validation) | its test perplexity | optimizer steps"
        " | train wall time (s) | evaluation wall time (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["results"]:
        lines.append(
            f"| {r['method']} | {r['last_module_test_perplexity']:.3f} | {r['best_module_by_validation']} | "
            f"{r['best_module_test_perplexity']:.3f} | {r['train_steps']} | {r['train_wall_s']:.0f} | "
            f"{r['eval_wall_s']:.0f} |"
        )
    lines += [
        "",
        "![perplexity per module](tiny_shakespeare_gpt2.png)",
        "",
        "Raw numbers (with training logs): `tiny_shakespeare_gpt2.json`.",
        "",
    ]
    return "\n".join(lines)


def head_result(
    name: str, model, val: dict, output, train_wall: float, eval_wall: float, aux_head: str, mode: str, tied: bool
) -> dict[str, Any]:
    """One arm of `--compare-heads`: validation loss / perplexity per module and the TRGL model's size."""
    modules = [
        {
            "module": k,
            "layers": sum(model.config.split[:k]),
            "validation_loss": val[f"validation_module_{k}_loss"],
            "validation_perplexity": val[f"validation_module_{k}_perplexity"],
        }
        for k in range(1, model.num_modules + 1)
    ]
    log(f"{name}: per-module validation perplexity {[round(m['validation_perplexity'], 3) for m in modules]}")
    return {
        "method": name,
        "aux_head": aux_head,
        "trgl_mode": mode,
        "tie_word_embeddings": tied,
        "num_modules": model.num_modules,
        "trgl_parameters": sum(p.numel() for p in model.parameters()),
        "train_steps": output.global_step,
        "train_wall_s": round(train_wall, 1),
        "eval_wall_s": round(eval_wall, 1),
        "modules": modules,
    }


def heads_markdown(result: dict[str, Any]) -> str:
    """The `--compare-heads` report: validation perplexity per module, native vs tied heads, per base and mode."""
    config, arms = result["config"], result["results"]
    k = config["num_modules"]
    lines = [
        "# Tiny Shakespeare, character-level GPT-2 from scratch: native vs tied decoder heads",
        "",
        "```bash",
        result["environment"]["command"],
        "```",
        "",
        f"Run on {result['environment']['date_utc']}; total run time "
        f"{result['total_wall_s']} s on a machine with 2 CPU cores shared with other jobs (wall times indicative).",
        "",
        f"GPT-2, {config['n_layer']} layers, n_embd {config['n_embd']}, {config['n_head']} heads, no dropout, "
        f"{config['vocab_size']}-character vocabulary, blocks of {config['block_size']}; TRGL K = {k}, tau = "
        f"{config['tau']} (halves), {config['steps']} optimizer steps per module (parallel: {config['steps']} steps "
        f"in all), batch {config['batch_size']}, AdamW lr {config['lr']}, cosine, {config['warmup_steps']} warm-up "
        f"steps, seed {config['seed']}. Same initial weights for both heads. `native`: every module's head is a copy "
        "of the final LayerNorm and of the LM head; `tied`: its own final LayerNorm + the one shared projection "
        "(module 1's `lm_head`, or the input embedding when the base ties them), trained by module 1 only. "
        "Validation split only (the head is chosen on it; the test split is not read).",
        "",
        "| base embeddings | mode | head | TRGL parameters | "
        + " | ".join(f"module {m} val. ppl" for m in range(1, k + 1))
        + " | train wall (s) |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in range(k)) + " | --- |",
    ]
    for arm in arms:
        ppl = " | ".join(f"{m['validation_perplexity']:.3f}" for m in arm["modules"])
        tied = "tied" if arm["tie_word_embeddings"] else "untied"
        lines.append(f"| {tied} | {arm['trgl_mode']} | {arm['aux_head']} | {arm['trgl_parameters']:,} | {ppl} | "
                     f"{arm['train_wall_s']} |")  # fmt: skip
    lines += ["", f"Raw numbers: `{result['report_name']}.json`.", ""]
    return "\n".join(lines)
