"""One arm of `benchmarks.memory_decoder`, run in a fresh process: build a Llama-style decoder from a `LlamaConfig`
(random weights, no download) or load it from a checkpoint folder (`"checkpoint"` in the spec: `TRGLModel.from_base`
of the path, lazy), train it a few steps per phase on random tokens, and write the peak RSS per phase.

    python -m benchmarks.reports.memory_decoder_arm SPEC.json RESULT.json
    python -m benchmarks.reports.memory_decoder_arm --baseline RESULT.json   # imports only
    python -m benchmarks.reports.memory_decoder_arm --save-base SPEC.json DIR  # the spec's decoder, saved (sharded)
    python -m benchmarks.reports.memory_decoder_arm --generate STAGE_DIR RESULT.json  # load a stage, generate

Peak anonymous memory: a background thread reads `RssAnon` of /proc/self/status every 5 ms (whole process and per
phase); unlike `VmHWM` it leaves out mapped file pages (`RssFile`: libraries, memory-mapped weights), which the kernel
can drop.

Peak RSS is `VmHWM` of /proc/self/status. Per phase: the high-water mark is reset (`/proc/self/clear_refs` = 5) when a
phase begins and read when it ends; before every reset the current `VmHWM` is folded into the whole-process peak, so
the whole-process peak is exact (max of every reading and the final `VmHWM`). With `"device": "cuda"` in the spec,
also `torch.cuda.max_memory_allocated` per phase (reset by `torch.cuda.reset_peak_memory_stats` at the same points).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

KIB = 1024


def status_bytes(key: str) -> int:
    """A `/proc/self/status` field (`VmHWM`, `VmRSS`, ...) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * KIB
    raise KeyError(key)


class AnonSampler(threading.Thread):
    """Peak `RssAnon` (whole process and since the last `take`), sampled every `period_s` seconds."""

    def __init__(self, period_s: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.period_s, self.whole, self.current, self.samples = period_s, 0, 0, 0
        self.lock = threading.Lock()
        self.sample()
        self.start()

    def sample(self) -> None:
        value = status_bytes("RssAnon")
        with self.lock:
            self.whole, self.current, self.samples = max(self.whole, value), max(self.current, value), self.samples + 1

    def run(self) -> None:
        while True:
            time.sleep(self.period_s)
            self.sample()

    def take(self) -> int:
        """The peak since the last `take` (including a reading now); restarts it from the current value."""
        self.sample()
        with self.lock:
            peak, self.current = self.current, 0
        self.sample()
        return peak


class PeakTracker:
    """Per-phase and whole-process peak RSS from `VmHWM`, with resets between phases, and peak `RssAnon`."""

    def __init__(self) -> None:
        self.whole = status_bytes("VmHWM")
        self.phases: list[dict[str, Any]] = []
        self.can_reset = True
        self.cuda = False
        self.anon = AnonSampler()

    def reset(self) -> None:
        """Fold the current high-water mark into the whole peak, then restart it from the current RSS."""
        self.whole = max(self.whole, status_bytes("VmHWM"))
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.can_reset = False

    def close_phase(self, name: str, **extra: Any) -> dict[str, Any]:
        """Record the peak since the last reset under `name`, and reset."""
        peak = status_bytes("VmHWM")
        anon = self.anon.take()
        self.phases.append(
            {"phase": name, "peak_rss_bytes": peak, "peak_anon_bytes": anon, "exact": self.can_reset, **extra}
        )
        if self.cuda:
            import torch

            self.phases[-1]["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        self.reset()
        return self.phases[-1]


def import_stack() -> None:
    """What every arm imports (the baseline process stops here)."""
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import trgl_hf  # noqa: F401


def llama(spec: dict[str, Any]):
    """A `LlamaForCausalLM` with random weights from the spec's width, depth and vocabulary (untied LM head)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(llama_config(spec))


def llama_config(spec: dict[str, Any]):
    """The `LlamaConfig` of the spec's decoder."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=spec["width"],
        intermediate_size=spec["intermediate"],
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["width"] // 64,
        num_key_value_heads=spec["width"] // 64,
        vocab_size=spec["vocab"],
        max_position_embeddings=spec["seq"],
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )


def save_base(spec: dict[str, Any], folder: str) -> None:
    """Build the spec's decoder and `save_pretrained` it into `folder` in 500 MB shards (the helper process)."""
    llama(spec).save_pretrained(folder, max_shard_size="500MB")


def generate(stage: str) -> dict[str, Any]:
    """Load a stage folder with `AutoModelForCausalLM.from_pretrained` and greedily generate 4 tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    begin = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(stage)
    ids = torch.tensor([[1, 2, 3, 4]])
    out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    return {
        "class": type(model).__name__,
        "layers": model.config.num_hidden_layers,
        "params": sum(p.numel() for p in model.parameters()),
        "new_tokens": out[0, ids.shape[1] :].tolist(),
        "seconds": round(time.perf_counter() - begin, 1),
    }


class RandomTokens:
    """`rows` sequences of `seq` random token ids (input_ids = labels; the model shifts them)."""

    def __init__(self, rows: int, seq: int, vocab: int):
        import torch

        generator = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, vocab, (rows, seq), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


def make_callback(tracker: PeakTracker):
    """A `TRGLCallback` closing a tracker phase per TRGL phase (or per `train()` for a plain `Trainer`)."""
    from trgl_hf import TRGLCallback

    class PhasePeaks(TRGLCallback):
        """Resets the high-water mark at each phase's start and reads it at its end, with the phase's trainables."""

        def __init__(self) -> None:
            self.trainable = 0
            self.count = 0

        def on_phase_begin(self, args, state, control, **kwargs):
            tracker.close_phase(f"before phase {self.count + 1}")

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if model is not None:
                self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

        def on_phase_end(self, args, state, control, **kwargs):
            self.count += 1
            tracker.close_phase(f"phase {self.count}", trainable_params=self.trainable)

    return PhasePeaks()


def train_args(spec: dict[str, Any], workdir: Path, arm: dict[str, Any]):
    """Trainer arguments shared by every arm: fp32 AdamW, `max_steps` per phase, no saving, no reporting, CPU."""
    common = dict(
        output_dir=str(workdir),
        max_steps=spec["steps"],
        per_device_train_batch_size=spec["batch"],
        learning_rate=1e-4,
        optim="adamw_torch",
        save_strategy="no",
        report_to="none",
        logging_strategy="no",
        use_cpu=spec.get("device", "cpu") == "cpu",
        gradient_checkpointing=arm.get("gc", False),
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    if arm["kind"] == "e2e":
        from transformers import TrainingArguments

        return TrainingArguments(**common)
    from trgl_hf import TRGLTrainingArguments

    stages = arm.get("save_stages", "none")
    return TRGLTrainingArguments(**common, trgl_mode=arm["mode"], trgl_save_stages=stages, trgl_offload=arm["offload"])


def run(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Train one arm; returns the per-phase and whole-process peaks and the parameter counts."""
    tracker = PeakTracker()
    begin_wall, begin_cpu = time.perf_counter(), time.process_time()
    import_stack()
    import torch
    from transformers import Trainer

    import trgl_hf

    torch.set_num_threads(spec.get("threads", 1))
    tracker.cuda = spec.get("device", "cpu") == "cuda"
    arm = spec["arm"]
    imports = tracker.close_phase("imports")
    if spec.get("checkpoint"):  # a TRGL arm: from_base(path) loads it lazily (memory-mapped)
        base = spec["checkpoint"]
        base_params = spec["checkpoint_params"]
    else:
        base = llama(spec)
        base_params = sum(p.numel() for p in base.parameters())
    model = base
    if arm["kind"] == "trgl":
        head = {"aux_head": arm["head"]} if arm.get("head") else {}
        config = trgl_hf.TRGLConfig(num_modules=arm["k"], tau=10.0, **head)
        model = trgl_hf.TRGLModel.from_base(base, config)
        del base
    model_params = sum(p.numel() for p in model.parameters())
    tracker.close_phase("build")
    data = RandomTokens(spec["batch"] * spec["steps"], spec["seq"], spec["vocab"])
    callback = make_callback(tracker)
    trainer_class = Trainer if arm["kind"] == "e2e" else trgl_hf.TRGLTrainer
    trainer = trainer_class(model=model, args=train_args(spec, workdir, arm), train_dataset=data, callbacks=[callback])
    begin_train = time.perf_counter()
    trainer.train()
    train_wall = time.perf_counter() - begin_train
    if arm["kind"] == "e2e":
        tracker.close_phase("phase 1", trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad))
    tracker.close_phase("end")
    cuda = {"cuda_whole_max_allocated_bytes": max(p.get("cuda_max_allocated_bytes", 0) for p in tracker.phases)}
    return {
        **(cuda if tracker.cuda else {}),
        "spec": spec,
        "import_rss_bytes": imports["peak_rss_bytes"],
        "base_params": base_params,
        "model_params": model_params,
        "phases": tracker.phases,
        "whole_peak_rss_bytes": max(tracker.whole, status_bytes("VmHWM")),
        "whole_peak_anon_bytes": tracker.anon.whole,
        "anon_samples": tracker.anon.samples,
        "train_wall_s": round(train_wall, 2),
        "stages": sorted(p.name for p in workdir.glob("stage-*")),
        "wall_s": round(time.perf_counter() - begin_wall, 2),
        "cpu_s": round(time.process_time() - begin_cpu, 2),
    }


def main(argv: list[str]) -> None:
    """`--baseline OUT` (imports only), `--save-base SPEC DIR`, `--generate STAGE OUT` or `SPEC OUT`."""
    if argv[0] == "--baseline":
        sampler = AnonSampler()
        import_stack()
        result = {
            "import_peak_rss_bytes": status_bytes("VmHWM"),
            "import_rss_bytes": status_bytes("VmRSS"),
            "import_peak_anon_bytes": sampler.take(),
        }
        Path(argv[1]).write_text(json.dumps(result))
        return
    if argv[0] == "--save-base":
        save_base(json.loads(Path(argv[1]).read_text()), argv[2])
        return
    if argv[0] == "--generate":
        Path(argv[2]).write_text(json.dumps(generate(argv[1])))
        return
    spec = json.loads(Path(argv[0]).read_text())
    result = run(spec, Path(spec["workdir"]))
    Path(argv[1]).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
