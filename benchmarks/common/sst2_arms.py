"""The arms of the SST-2 / MiniLM benchmark (`benchmarks/text_sst2_minilm.py`): one training run each, and the
frozen-probe reference. Every function returns a JSON-able dict (one run file)."""

from __future__ import annotations

import gc
import time
from typing import Any

import numpy as np
import torch

from . import steps
from .env import log

LORA = dict(
    task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["query", "key", "value", "dense"]
)
PAPER_ARGS = dict(trgl_head_lr_multiplier=1.0, trgl_head_warmup_steps=0)

# kind "plain": the model trained by `transformers.Trainer`; kind "trgl": `TRGLModel.from_base` + `TRGLTrainer`.
# `config` / `args`: explicit TRGLConfig / TRGLTrainingArguments settings (none: the library's defaults).
ARMS: dict[str, dict[str, Any]] = {
    "e2e": dict(label="E2E", kind="plain"),
    "e2e_gc": dict(label="E2E + GC", kind="plain", gradient_checkpointing=True),
    "lora_e2e": dict(label="LoRA E2E", kind="plain", lora=True),
    "vangl": dict(label="VanGL", kind="trgl", config=dict(use_transport=False), args=PAPER_ARGS),
    "trgl_paper": dict(
        label="TRGL (paper)",
        kind="trgl",
        config=dict(tau=10.0, tau_schedule="constant", tau_scale="absolute"),
        args=PAPER_ARGS,
    ),
    # library defaults: for this pretrained text classifier, mean-pooling heads (`aux_head="mean"`), heads at 1e-3,
    # relative tau = 1000 (this library's extensions, see `trgl_hf/modeling/pretrained_defaults.py`)
    "trgl_defaults": dict(label="TRGL (defaults)", kind="trgl", library_defaults=True),
    "trgl_lora": dict(label="TRGL + LoRA", kind="trgl", lora=True, library_defaults=True),
    # the paper's VanGL with the defaults' mean heads: what the transport term adds with the same heads
    "vangl_mean": dict(
        label="VanGL (mean heads)", kind="trgl", config=dict(use_transport=False, aux_head="mean"), args=PAPER_ARGS
    ),
    # the library defaults with the task model's own head (the defaults before mean heads were chosen on validation)
    "trgl_native": dict(
        label="TRGL (defaults, native heads)", kind="trgl", config=dict(aux_head="native"), library_defaults=True
    ),
    "trgl_lora_native": dict(
        label="TRGL + LoRA (native heads)",
        kind="trgl",
        lora=True,
        config=dict(aux_head="native"),
        library_defaults=True,
    ),
}
SWEEP: dict[str, dict[str, Any]] = {
    name: dict(
        label=f"sweep {name}",
        kind="trgl",
        sweep=True,
        config=dict(tau=tau, tau_schedule="halves", tau_scale=scale),
        args=dict(trgl_head_lr_multiplier=mult, trgl_head_warmup_steps=warmup),
    )
    for name, mult, warmup, scale, tau in (
        ("S1", 20.0, 0, "relative", 10.0),
        ("S2", 20.0, 50, "relative", 10.0),
        ("S3", 20.0, 50, "absolute", 10.0),
        ("S4", 100.0, 50, "relative", 10.0),
        ("S5", 20.0, 0, "relative", 100.0),  # S5, S6: added after S1-S4 (the winner S1 left modules 1-2 at chance)
        ("S6", 20.0, 0, "relative", 1000.0),
    )
}
ALL_ARMS = {**ARMS, **{f"sweep_{k}": v for k, v in SWEEP.items()}}


def build_base(model_path: str, tokenizer, quick: bool, lora: bool, seed: int):
    """MiniLM with a new 2-way classifier initialised under `torch.manual_seed(seed)` (a tiny random BERT with
    `quick`), LoRA-wrapped with `LORA` when asked."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    if quick:
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=6,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=2,
        )
        base = BertForSequenceClassification(config)
    else:
        base = BertForSequenceClassification.from_pretrained(model_path, num_labels=2)
    if lora:
        import peft

        base = peft.get_peft_model(base, peft.LoraConfig(**LORA))
    return base


def trainable_summary(model) -> dict[str, Any]:
    """Which parameters train: counts, and the distinct kinds of trainable names (numbers replaced by #)."""
    import re

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    kinds = sorted({re.sub(r"\.\d+\.", ".#.", n) for n in names})
    return {
        "trainable_parameters": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        "total_parameters": int(sum(p.numel() for p in model.parameters())),
        "trainable_name_patterns": kinds[:40],
    }


def common_args(opts, out: str, seed: int, lr: float) -> dict[str, Any]:
    return dict(
        output_dir=out,
        num_train_epochs=opts.epochs,
        per_device_train_batch_size=opts.batch_size,
        per_device_eval_batch_size=opts.eval_batch_size,
        learning_rate=lr,
        weight_decay=0.01,
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        seed=seed,
        data_seed=seed,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=50,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length",
    )


def run_arm(arm: str, k: int | None, seed: int, data, tokenizer, model_path: str, opts, work_dir) -> dict[str, Any]:
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    spec = ALL_ARMS[arm]
    lr = opts.lora_lr if spec.get("lora") else opts.lr
    base = build_base(model_path, tokenizer, opts.quick, spec.get("lora", False), seed)
    collator = DataCollatorWithPadding(tokenizer)
    settings: dict[str, Any] = {}
    if spec["kind"] == "plain":
        args = TrainingArguments(
            **common_args(opts, str(work_dir), seed, lr),
            gradient_checkpointing=spec.get("gradient_checkpointing", False),
        )
        model = base
        trainer = Trainer(model=model, args=args, train_dataset=data["train"], data_collator=collator)
    else:
        from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments

        config = TRGLConfig(num_modules=k, **spec.get("config", {}))
        model = TRGLModel.from_base(base, config)
        args = TRGLTrainingArguments(
            **common_args(opts, str(work_dir), seed, lr),
            trgl_mode="sequential",
            trgl_save_stages=False,
            trgl_prefix_cache="never",
            **spec.get("args", {}),
        )
        trainer = TRGLTrainer(model=model, args=args, train_dataset=data["train"], data_collator=collator)
        settings = {
            "aux_head": model.config.aux_head,
            "split": list(model.config.split),
            "use_transport": bool(model.config.use_transport),
            "tau": model.config.tau,
            "tau_schedule": model.config.tau_schedule,
            "tau_scale": getattr(model.config, "tau_scale", None),
            "module_taus": [None if t == float("inf") else t for t in model.config.module_taus()],
            "trgl_head_lr_multiplier": args.trgl_head_lr_multiplier,
            "trgl_head_warmup_steps": args.trgl_head_warmup_steps,
            "head_settings_in_effect": repr(getattr(trainer, "head_settings", None)),
            "explicit_config": spec.get("config", {}),
            "explicit_args": spec.get("args", {}),
        }
    log(f"{arm} K={k} seed={seed}: training ({settings or 'plain Trainer'})")
    started = time.perf_counter()
    output = trainer.train()
    train_wall = time.perf_counter() - started
    log(f"{arm} K={k} seed={seed}: trained in {train_wall:.0f}s ({output.global_step} steps)")
    started = time.perf_counter()
    modules = evaluate(trainer, model, data, spec["kind"])
    eval_wall = time.perf_counter() - started
    best = max(modules, key=lambda m: (m["validation_accuracy"], -m["module"]))
    result = {
        "arm": arm,
        "label": spec["label"],
        "num_modules": k,
        "seed": seed,
        "lr": lr,
        "settings": settings,
        "train_steps": output.global_step,
        "train_loss": output.training_loss,
        "train_wall_s": round(train_wall, 1),
        "eval_wall_s": round(eval_wall, 1),
        "modules": modules,
        "best_module_by_validation": best["module"],
        "best_module_validation_accuracy": best["validation_accuracy"],
        "best_module_test_accuracy": best["test_accuracy"],
        "last_module_validation_accuracy": modules[-1]["validation_accuracy"],
        "last_module_test_accuracy": modules[-1]["test_accuracy"],
        "trainable": trainable_summary(model),
        "train_log": [e for e in trainer.state.log_history if "loss" in e],
    }
    if seed == opts.memory_seed and not opts.skip_memory and not spec.get("sweep"):
        started = time.perf_counter()
        if spec["kind"] == "plain":
            phases = [steps.plain_trainer_step_memory(model, opts.memory_batch, args)]
        else:
            cached = trainer.prefix_cache_decision()[0]
            phases = [
                steps.trainer_step_memory(model, i, opts.memory_batch, args, cached) for i in range(model.num_modules)
            ]
        result["memory_phases"] = phases
        result["peak_memory_mib"] = max(p["peak_mib"] for p in phases)
        result["peak_memory_without_frozen_weights_mib"] = max(p["peak_without_frozen_weights_mib"] for p in phases)
        result["peak_saved_activations_mib"] = max(p["saved_activations_mib"] for p in phases)
        log(f"{arm}: memory in {time.perf_counter() - started:.0f}s, peak {result['peak_memory_mib']} MiB")
    log(f"{arm} K={k} seed={seed}: per-module test {[round(m['test_accuracy'], 4) for m in modules]}")
    del trainer, model, base
    gc.collect()
    return result


def evaluate(trainer, model, data, kind: str) -> list[dict[str, Any]]:
    """Validation and test accuracy of every module (one module for a plain model)."""
    if kind == "plain":
        row: dict[str, Any] = {"module": 1, "encoder_layers": None}
        for split in ("validation", "test"):
            pred = trainer.predict(data[split], metric_key_prefix=split)
            logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
            row[f"{split}_accuracy"] = float(np.mean(np.argmax(logits, -1) == pred.label_ids))
            row[f"{split}_loss"] = pred.metrics.get(f"{split}_loss")
        return [row]
    val = trainer.evaluate(eval_dataset=data["validation"], metric_key_prefix="validation")
    test = trainer.evaluate(eval_dataset=data["test"], metric_key_prefix="test")
    return [
        {
            "module": i,
            "encoder_layers": sum(model.config.split[:i]),
            "validation_accuracy": val[f"validation_module_{i}_accuracy"],
            "validation_loss": val[f"validation_module_{i}_loss"],
            "test_accuracy": test[f"test_module_{i}_accuracy"],
            "test_loss": test[f"test_module_{i}_loss"],
        }
        for i in range(1, model.num_modules + 1)
    ]


# ============================================================================ frozen probe


@torch.no_grad()
def pooled_states(encoder, ds, batch_size: int, collator) -> torch.Tensor:
    """(layers, rows, hidden): attention-mask-weighted mean of every encoder layer's token states."""
    out = []
    for start in range(0, len(ds), batch_size):
        rows = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
        batch = collator([{k: r[k] for k in ("input_ids", "token_type_ids", "attention_mask")} for r in rows])
        hidden = encoder(**batch, output_hidden_states=True).hidden_states[1:]
        mask = batch["attention_mask"].unsqueeze(-1).float()
        out.append(torch.stack([(h * mask).sum(1) / mask.sum(1) for h in hidden]))
    return torch.cat(out, dim=1)


def logistic_probe(x, y, l2: float, steps_: int = 100) -> torch.nn.Linear:
    torch.manual_seed(0)
    probe = torch.nn.Linear(x.shape[1], 2)
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=steps_, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(x), y) + l2 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe


def run_probe(data, tokenizer, model_path: str, opts, l2s=(1e-4, 1e-3, 1e-2, 1e-1)) -> dict[str, Any]:
    """Frozen pretrained encoder up to layer d, mean-pooled states, an L2 logistic-regression probe per depth (L2
    weight chosen on validation), trained on the training rows."""
    from transformers import DataCollatorWithPadding

    base = build_base(model_path, tokenizer, opts.quick, False, 0).eval()
    collator = DataCollatorWithPadding(tokenizer)
    started = time.perf_counter()
    feats = {
        s: pooled_states(base.bert, data[s], opts.eval_batch_size, collator) for s in ("train", "validation", "test")
    }
    labels = {s: torch.tensor(data[s]["label"]) for s in feats}
    forward_s = time.perf_counter() - started
    depths = []
    for d in range(feats["train"].shape[0]):
        mean, std = feats["train"][d].mean(0), feats["train"][d].std(0) + 1e-6
        x = {s: (feats[s][d] - mean) / std for s in feats}
        candidates = []
        for l2 in l2s:
            probe = logistic_probe(x["train"], labels["train"], l2)
            with torch.no_grad():
                acc = {s: float((probe(x[s]).argmax(-1) == labels[s]).float().mean()) for s in x}
            candidates.append({"l2": l2, **{f"{s}_accuracy": a for s, a in acc.items()}})
        best = max(candidates, key=lambda c: (c["validation_accuracy"], c["l2"]))
        depths.append({"encoder_layers": d + 1, "chosen_l2": best["l2"], **best, "candidates": candidates})
        log(
            f"probe depth {d + 1}: l2 {best['l2']:g}, val {best['validation_accuracy']:.4f}, "
            f"test {best['test_accuracy']:.4f}"
        )
    return {"arm": "probe", "label": "frozen probe", "forward_wall_s": round(forward_s, 1), "depths": depths,
            "total_wall_s": round(time.perf_counter() - started, 1)}  # fmt: skip
