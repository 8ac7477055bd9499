"""Accuracy of end-to-end vs VanGL vs TRGL on real CIFAR-10 (the JPEG copy in ../shared/data/cifar10).

Training images: a stratified prefix of the official train split; validation: the next 1,000 train rows (model and
tau selection only); test: the official test split (or its stratified prefix). Per-module accuracy is recorded
(the stagnation curve) and the best module is chosen on validation.

    python benchmarks/accuracy_cifar10.py --train-size 1000 --depth 20 --modules 4 --epochs 10 --seeds 0 1
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset, load_dataset  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from trgl_hf import (  # noqa: E402
    CifarResNetConfig,
    CifarResNetForImageClassification,
    TRGLConfig,
    TRGLModel,
    TRGLTrainer,
    TRGLTrainingArguments,
)

DATA = Path(os.environ.get("TRGL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MEAN = torch.tensor([0.4913, 0.4821, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.2452, 0.2428, 0.2606]).view(1, 3, 1, 1)


def decode(split: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    array = split.with_format("numpy")[:]
    images = torch.from_numpy(array["img"]).permute(0, 3, 1, 2).float().div(255)
    return (images - MEAN) / STD, torch.from_numpy(array["label"]).long()


class Augmented(torch.utils.data.Dataset):
    """Random crop (4-pixel zero padding) and horizontal flip, on tensors."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = torch.nn.functional.pad(images, (4, 4, 4, 4)), labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        top, left = np.random.randint(0, 9, size=2)
        image = self.images[index, :, top : top + 32, left : left + 32]
        if np.random.rand() < 0.5:
            image = image.flip(-1)
        return {"pixel_values": image, "labels": self.labels[index]}


class Plain(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.images[index], "labels": self.labels[index]}


def run(arm: str, mode: str, seed: int, data: dict, options: argparse.Namespace, output: Path) -> dict:
    torch.manual_seed(seed)
    base = CifarResNetForImageClassification(CifarResNetConfig.from_depth(options.depth, num_labels=10))
    if arm == "e2e":
        config = TRGLConfig(num_modules=1, use_transport=False, aux_head="conv")
        mode = "sequential"
    else:
        config = TRGLConfig(num_modules=options.modules, tau=options.tau, use_transport=arm == "trgl")
    model = TRGLModel.from_base(base, config)
    epochs = options.epochs * (options.modules if arm == "e2e" and options.e2e_total_epochs else 1)
    args = TRGLTrainingArguments(
        output_dir=str(output / f"{arm}-{mode}-{seed}"), trgl_mode=mode, num_train_epochs=epochs,
        per_device_train_batch_size=128, per_device_eval_batch_size=500, learning_rate=options.lr, optim="sgd",
        optim_args="momentum=0.9", weight_decay=5e-4, lr_scheduler_type="cosine", report_to="none",
        save_strategy="no", eval_strategy="no", disable_tqdm=True, use_cpu=True, seed=seed, trgl_save_stages=False,
        remove_unused_columns=False, trgl_laps=options.laps, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = TRGLTrainer(model=model, args=args, train_dataset=data["train"], eval_dataset=data["validation"])
    started = time.time()
    trainer.train()
    seconds = time.time() - started
    validation = trainer.evaluate()
    test = trainer.evaluate(data["test"], metric_key_prefix="test")
    k = model.num_modules
    row = {
        "arm": arm, "mode": mode, "seed": seed, "seconds": round(seconds, 1),
        "validation": [validation[f"eval_module_{i}_accuracy"] for i in range(1, k + 1)],
        "test": [test[f"test_module_{i}_accuracy"] for i in range(1, k + 1)],
    }  # fmt: skip
    best = int(np.argmax(row["validation"]))
    row.update(best_module=best + 1, best_by_validation_test=row["test"][best], last_test=row["test"][-1])
    print(json.dumps(row), flush=True)
    return row


# Two-sided 95% quantiles of Student's t for 1..10 degrees of freedom (few seeds: a normal interval is too narrow).
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]


def summarise(rows: list[dict]) -> dict:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(f"{row['arm']}/{row['mode']}", []).append(row)
    summary = {}
    for name, group in groups.items():
        entry = {}
        for key in ("last_test", "best_by_validation_test"):
            values = np.array([r[key] for r in group]) * 100
            n = len(values)
            t = T_975[min(n - 2, len(T_975) - 1)] if n > 1 else float("nan")
            half = t * values.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
            entry[key] = {"mean": float(values.mean()), "ci95": float(half), "n": len(values)}
        entry["per_module_test_mean"] = list(np.mean([r["test"] for r in group], axis=0) * 100)
        entry["seconds_mean"] = float(np.mean([r["seconds"] for r in group]))
        summary[name] = entry
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--test-size", type=int, default=10000)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--modules", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=10, help="epochs per module")
    parser.add_argument("--e2e-total-epochs", action="store_true", help="E2E trains K x epochs (same total budget)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--tau", type=float, default=10.0)
    parser.add_argument("--laps", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["sequential"])
    parser.add_argument("--arms", nargs="+", default=["e2e", "vangl", "trgl"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="accuracy_cifar10")
    parser.add_argument("--render-only", help="re-render the tables and plot from a results JSON")
    options = parser.parse_args()
    if options.render_only:
        render(json.loads(Path(options.render_only).read_text()), Path(options.render_only).parent)
        return
    torch.set_num_threads(options.threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    files = sorted(glob.glob(str(DATA / "cifar10" / "train-*.parquet")))
    raw = load_dataset(
        "parquet", data_files={"train": files, "test": str(DATA / "cifar10" / "test-00000-of-00001.parquet")}
    )
    train_images, train_labels = decode(raw["train"].select(range(options.train_size + 1000)))
    test_images, test_labels = decode(raw["test"].select(range(options.test_size)))
    data = {
        "train": Augmented(train_images[: options.train_size], train_labels[: options.train_size]),
        "validation": Plain(train_images[options.train_size :], train_labels[options.train_size :]),
        "test": Plain(test_images, test_labels),
    }
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / "trgl-accuracy"
    rows = []
    for seed in options.seeds:
        for mode in options.modes:
            for arm in options.arms:
                if arm == "e2e" and mode != options.modes[0]:
                    continue
                rows.append(run(arm, mode, seed, data, options, scratch))
    command = "python " + " ".join(sys.argv)
    payload = {"command": command, "options": vars(options), "rows": rows,
               "environment": {"torch": torch.__version__, "python": platform.python_version(),
                               "threads": options.threads, "date": time.strftime("%Y-%m-%d")}}  # fmt: skip
    render(payload, results)


def render(payload: dict, results: Path) -> None:
    """Write the JSON, the Markdown table (mean and t-based 95% interval over seeds) and the per-module plot."""
    options = argparse.Namespace(**payload["options"])
    command = payload["command"]
    summary = payload["summary"] = summarise(payload["rows"])
    (results / f"{options.name}.json").write_text(json.dumps(payload, indent=2))
    lines = [f"# {options.name}", "", f"Command: `{command}`", "",
             "| arm / mode | last module test % (mean ± 95% CI) | best-by-validation test % | test % per module | "
             "seconds |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, entry in summary.items():
        last, best = entry["last_test"], entry["best_by_validation_test"]
        per_module = " / ".join(f"{v:.1f}" for v in entry["per_module_test_mean"])
        lines.append(
            f"| {name} | {last['mean']:.2f} ± {last['ci95']:.2f} (n={last['n']}) | {best['mean']:.2f} ± "
            f"{best['ci95']:.2f} | {per_module} | {entry['seconds_mean']:.0f} |"
        )
    (results / f"{options.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.5))
    for name, entry in summary.items():
        values = entry["per_module_test_mean"]
        axis.plot(range(1, len(values) + 1), values, marker="o", label=name)
    axis.set_xlabel("module")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(f"CIFAR-10, {options.train_size} images, ResNet-{options.depth}")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(results / f"{options.name}.png", dpi=120)


if __name__ == "__main__":
    main()
