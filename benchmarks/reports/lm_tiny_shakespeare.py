"""The Tiny Shakespeare report: per-module perplexities (Markdown; prose: `templates/lm_tiny_shakespeare.md`) and the
plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import report
from benchmarks.common.env import log

NAME = "lm_tiny_shakespeare"


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
    k4_note = "" if 4 in cfg["num_modules"] else report.text(NAME, "k4_note")
    header = report.text(NAME, "header", **cfg, command=env["command"], date_utc=env["date_utc"], torch=env["torch"],
                         transformers=env["transformers"], torch_threads=env["torch_threads"],
                         cpu_count=env["cpu_count"], load=env["load_average_at_start"][0],
                         total_wall_s=result["total_wall_s"], train_blocks=d["train"]["blocks"],
                         validation_blocks=d["validation"]["blocks"], test_blocks=d["test"]["blocks"],
                         k4_note=k4_note)  # fmt: skip
    lines = [
        header,
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
        report.text(NAME, "footer"),
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
    environment = result["environment"]
    header = report.text(NAME, "heads_header", **config, k=k, command=environment["command"],
                         date_utc=environment["date_utc"], total_wall_s=result["total_wall_s"])  # fmt: skip
    lines = [
        header,
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
    lines += ["", report.text(NAME, "heads_footer", report_name=result["report_name"]), ""]
    return "\n".join(lines)
