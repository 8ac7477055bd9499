"""`python -m benchmarks.lm_tiny_shakespeare --parallel-memory`: what the decoder head choice costs in memory, TRGL
parallel K = 4 against end-to-end on a Llama-style decoder with a 32,000-token vocabulary (see that module's
docstring)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import env, report
from benchmarks.common.env import log

NAME = "decoder_heads_memory"

MEMORY_DECODER = dict(vocab_size=32000, hidden_size=256, num_hidden_layers=8, num_attention_heads=4,
                      num_key_value_heads=4, intermediate_size=688, max_position_embeddings=256)  # fmt: skip
MEMORY_ARMS = (("native", 10**9, "native heads, whole logits"), ("native", None, "native heads, chunked"),
               ("tied", 10**9, "tied heads, whole logits"), ("tied", None, "tied heads, chunked"))  # fmt: skip


def _memory_row(name: str, model, step_fn, input_ids) -> dict[str, Any]:
    import torch

    from benchmarks.common.memory import measure_step

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step(ctx) -> None:
        with ctx.phase("fwd_bwd"):
            step_fn(model)
        ctx.capture_grads(params)
        with ctx.phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    measured = measure_step(step, model, optimizer, [input_ids], warmup=True)
    row = {"run": name, "parameters": sum(p.numel() for p in model.parameters()), "peak_bytes": measured["peak_bytes"]}
    log(f"{name}: {row['parameters'] / 1e6:.1f}M parameters, peak {row['peak_bytes'] / 2**20:.0f} MiB")
    return row


def parallel_memory(opts, command: str, out_dir: Path) -> dict[str, Any]:
    """`--parallel-memory`: peak memory of one step, end-to-end vs TRGL parallel K = 4, native / tied heads, whole /
    chunked LM loss."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from trgl_hf import TRGLConfig, TRGLModel

    def base():
        torch.manual_seed(opts.seed)
        return LlamaForCausalLM(LlamaConfig(**MEMORY_DECODER)).train()

    input_ids = torch.randint(0, MEMORY_DECODER["vocab_size"], (4, MEMORY_DECODER["max_position_embeddings"]))

    def end_to_end(model) -> None:
        model(input_ids=input_ids, labels=input_ids).loss.backward()

    def trgl(model) -> None:
        for step in model.iter_modules(labels=input_ids, input_ids=input_ids):
            step.loss.backward()

    rows = [_memory_row("end-to-end", base(), end_to_end, input_ids)]
    for head, chunk, label in MEMORY_ARMS:
        config = TRGLConfig(num_modules=4, aux_head=head, lm_loss_chunk_tokens=chunk)
        rows.append(_memory_row(f"TRGL parallel K=4, {label}", TRGLModel.from_base(base(), config).train(), trgl,
                                input_ids))  # fmt: skip
    result = {"benchmark": "decoder_heads_parallel_memory", "decoder": MEMORY_DECODER, "batch": [4, 256],
              "rows": rows, "environment": env.environment(command)}  # fmt: skip
    text = markdown(result)
    report.write_json(out_dir / "decoder_heads_parallel_memory.json", result, indent=2)
    report.write_atomically(out_dir / "decoder_heads_parallel_memory.md", text)
    print(text)
    return result


def markdown(result: dict[str, Any]) -> str:
    """The `--parallel-memory` report (prose: `templates/decoder_heads_memory.md`)."""
    rows, environment = result["rows"], result["environment"]
    end = rows[0]["peak_bytes"]
    decoder = ", ".join(f"{k} {v}" for k, v in result["decoder"].items())
    lines = [
        report.text(NAME, "header", command=environment["command"], date_utc=environment["date_utc"], decoder=decoder),
        "",
        "| run | parameters | peak MiB | x end-to-end |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(f"| {row['run']} | {row['parameters'] / 1e6:.1f}M | {row['peak_bytes'] / 2**20:.0f} | "
                     f"{row['peak_bytes'] / end:.2f} |")  # fmt: skip
    lines += ["", report.text(NAME, "footer"), ""]
    return "\n".join(lines)
