"""GPU peak training memory of a Llama-style decoder: the rows of `benchmarks.memory_decoder` measured with
`torch.cuda.max_memory_allocated` (issue 26, item 7), plus `trgl_offload="cpu"` when the library has it.

    python -m benchmarks.gpu_memory_decoder                        # hidden 1024, 12 and 24 layers, batch 4 x 256
    python -m benchmarks.gpu_memory_decoder --quick --device cpu   # smoke run of the code paths on CPU

Every arm is a fresh process (`benchmarks/reports/memory_decoder_arm.py` with `"device": "cuda"`): the decoder is
built from a `LlamaConfig` (random weights), trained `--steps` steps per phase through `transformers.Trainer` /
`TRGLTrainer` (fp32 AdamW, random tokens, `save_strategy="no"`, `trgl_save_stages="none"`); the CUDA peak is reset at
each phase's start and read at its end. Untested on a GPU so far (written on a CPU-only machine).

Outputs `gpu_memory_decoder.json` and `gpu_memory_decoder.md` in `--out-dir` (default `benchmarks/results`; a
temporary folder with `--quick`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.memory_decoder import ARMS, QUICK_ARMS, REPO_ROOT, TINY, log, tied_available
from benchmarks.reports.memory_decoder import machine
from benchmarks.reports.memory_decoder_runs import run_arm

ISSUE_MODEL = {"width": 1024, "intermediate": 2816, "vocab": 32000, "seq": 256, "batch": 4}
GPU_ARMS = ["e2e", "e2e_gc", "seq_k4", "seq_k8", "seq_k8_gc", "par_k4", "seq_k8_tied", "par_k4_tied", "seq_k8_offload"]
MIB = 2**20


def offload_available() -> bool:
    """Whether this checkout's `trgl_offload` has `"cpu"` (read from its source; `"disk"` is refused on a GPU)."""
    offload = REPO_ROOT / "trgl_hf" / "training" / "offload.py"
    return offload.exists() and '"cpu"' in offload.read_text().split("OFFLOAD_CHOICES", 1)[-1].split("\n", 1)[0]


def arms(quick: bool) -> tuple[dict[str, dict], list[str]]:
    """The arms this checkout can run, and notes on those it cannot."""
    table = {**ARMS, "seq_k8_offload": {"kind": "trgl", "mode": "sequential", "k": 8, "offload": "cpu"}}
    if quick:
        return {n: a for n, a in QUICK_ARMS.items() if a.get("offload") != "disk"}, []
    chosen, notes = {}, []
    for name in GPU_ARMS:
        arm = table[name]
        if arm.get("head") == "tied" and not tied_available():
            notes.append(f"{name}: skipped, `TRGLConfig(aux_head='tied')` does not exist in this checkout")
        elif arm.get("offload") == "cpu" and not offload_available():
            notes.append(f"{name}: skipped, `trgl_offload='cpu'` does not exist in this checkout")
        else:
            chosen[name] = arm
    return chosen, notes


def row(record: dict[str, Any], e2e: dict[int, int]) -> str:
    """A Markdown row: CUDA peak, x end-to-end, per-phase CUDA peaks, host peak RSS."""
    if not record.get("ok"):
        return f"| {record['layers']} | {record['arm']} | failed: {record.get('failure')} | | | | |"
    cuda = record.get("cuda_whole_max_allocated_bytes")
    phases = [p.get("cuda_max_allocated_bytes") for p in record["phases"] if p["phase"].startswith("phase ")]
    reference = e2e.get(record["layers"])
    ratio = f"{cuda / reference:.2f}" if cuda and reference else "–"
    cells = [
        str(record["layers"]),
        record["arm"],
        f"{record['model_params'] / 1e6:.1f}M",
        "–" if cuda is None else f"{cuda / MIB:.0f}",
        ratio,
        " ".join("–" if p is None else f"{p / MIB:.0f}" for p in phases),
        f"{record['whole_peak_rss_bytes'] / MIB:.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def markdown(result: dict[str, Any]) -> str:
    """The report."""
    records = result["runs"]
    e2e = {r["layers"]: r.get("cuda_whole_max_allocated_bytes") for r in records if r["arm"] == "e2e" and r.get("ok")}
    lines = [
        "# GPU decoder training memory" + (" — quick mode (CPU: no CUDA figures)" if result["quick"] else ""),
        "",
        f"Command: `{result['command']}`. Device: {result['device']}. Model: {json.dumps(result['model'])}, "
        f"{result['steps']} steps per phase, fp32 AdamW. CUDA peak = `torch.cuda.max_memory_allocated` (whole run "
        "and per phase); host = `VmHWM`.",
        "",
        "| L | arm | model params | CUDA peak MiB | x e2e | phase CUDA peaks MiB | host peak RSS MiB |",
        "|" + " --- |" * 7,
        *[row(r, e2e) for r in records],
        "",
        *[f"- {note}" for note in result["notes"]],
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--layers", type=int, nargs="+", default=[12, 24])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny decoder, K = 2")
    parser.add_argument("--out-dir", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out_dir = args.out_dir or (
        Path(tempfile.mkdtemp(prefix="trgl_gpu_decoder_")) if args.quick else REPO_ROOT / "benchmarks" / "results"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model = {**(TINY if args.quick else ISSUE_MODEL), "device": args.device}
    layers = [4] if args.quick else args.layers
    chosen, notes = arms(args.quick)
    records = [
        run_arm(model, depth, name, arm, 1 if args.quick else args.steps, timeout_s=1200)
        for depth in layers
        for name, arm in chosen.items()
    ]
    command = " ".join(["python -m benchmarks.gpu_memory_decoder", *(sys.argv[1:] if argv is None else argv)])
    result = {
        "quick": args.quick,
        "command": command,
        "device": args.device,
        "model": model,
        "steps": 1 if args.quick else args.steps,
        "layers": layers,
        "notes": notes + ["untested on a GPU when written"],
        "runs": records,
        "machine": machine(),
    }
    (out_dir / "gpu_memory_decoder.json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    (out_dir / "gpu_memory_decoder.md").write_text(text)
    log(f"wrote {out_dir}")
    print(text)
    return result


if __name__ == "__main__":
    main()
