"""Accuracy of end-to-end vs VanGL vs TRGL on real CIFAR-10 (the JPEG copy in ../shared/data/cifar10).

Training images: a stratified prefix of the official train split; validation: the next 1,000 train rows (model and
tau selection only); test: the official test split (or its stratified prefix). Per-module accuracy is recorded
(the stagnation curve) and the best module is chosen on validation.

    python benchmarks/accuracy_cifar10.py --train-size 1000 --depth 20 --modules 4 --epochs 10 --seeds 0 1

The calibration recipe of ../shared/reference/calibration.md (K = 9 one-block modules, 35 epochs per module):

    python benchmarks/accuracy_cifar10.py --train-size 1000 --test-size 2000 --modules 9 --epochs 35 --tau 3 \
        --lr 0.1 --weight-decay 2e-4 --label-smoothing 0.1 --drop-last --seeds 0 1 2

Results are rewritten after every run (an interrupted sweep keeps what finished) and `--resume` skips the runs a
previous invocation with the same `--name` already recorded. `--taus` sweeps TRGL's tau (the tau sensitivity study);
`--render-only a.json b.json --name merged` merges the rows of several result files into one table.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
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


def run(arm: str, mode: str, seed: int, tau: float, data: dict, options: argparse.Namespace, output: Path) -> dict:
    torch.manual_seed(seed)
    base = CifarResNetForImageClassification(CifarResNetConfig.from_depth(options.depth, num_labels=10))
    if arm == "e2e":
        config = TRGLConfig(
            num_modules=1, use_transport=False, aux_head="conv", label_smoothing=options.label_smoothing
        )
        mode = "sequential"
    else:
        config = TRGLConfig(
            num_modules=options.modules, tau=tau or options.tau, use_transport=arm == "trgl",
            label_smoothing=options.label_smoothing,
        )  # fmt: skip
    model = TRGLModel.from_base(base, config)
    epochs = options.epochs * (options.modules if arm == "e2e" and options.e2e_total_epochs else 1)
    args = TRGLTrainingArguments(
        output_dir=str(output), trgl_mode=mode, num_train_epochs=epochs,
        per_device_train_batch_size=128, per_device_eval_batch_size=500, learning_rate=options.lr, optim="sgd",
        optim_args="momentum=0.9", weight_decay=options.weight_decay, lr_scheduler_type="cosine", report_to="none",
        save_strategy="no", eval_strategy="no", disable_tqdm=True, use_cpu=True, seed=seed, trgl_save_stages=False,
        remove_unused_columns=False, trgl_laps=options.laps, dataloader_num_workers=0,
        dataloader_drop_last=options.drop_last,
    )  # fmt: skip
    trainer = TRGLTrainer(model=model, args=args, train_dataset=data["train"], eval_dataset=data["validation"])
    started = time.time()
    trainer.train()
    seconds = time.time() - started
    validation = trainer.evaluate()
    test = trainer.evaluate(data["test"], metric_key_prefix="test")
    k = model.num_modules
    row = {
        "arm": arm, "mode": mode, "seed": seed, "tau": tau if arm == "trgl" else None, "seconds": round(seconds, 1),
        "validation": [validation[f"eval_module_{i}_accuracy"] for i in range(1, k + 1)],
        "test": [test[f"test_module_{i}_accuracy"] for i in range(1, k + 1)],
    }  # fmt: skip
    best = int(np.argmax(row["validation"]))
    row.update(best_module=best + 1, best_by_validation_test=row["test"][best], last_test=row["test"][-1])
    print(json.dumps(row), flush=True)
    return row


# Two-sided 95% quantiles of Student's t for 1..10 degrees of freedom (few seeds: a normal interval is too narrow).
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]


def mean_and_interval(values: list[float]) -> dict:
    """Mean, half-width of the t-based 95% interval (nan for one value) and count."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    half = T_975[min(n - 2, len(T_975) - 1)] * values.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
    return {"mean": float(values.mean()), "ci95": float(half), "n": n}


def group_name(row: dict, several_taus: bool) -> str:
    name = f"{row['arm']}/{row['mode']}"
    return f"{name} tau={row['tau']:g}" if several_taus and row["arm"] == "trgl" else name


def summarise(rows: list[dict]) -> dict:
    several_taus = len({row.get("tau") for row in rows if row["arm"] == "trgl"}) > 1
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(group_name(row, several_taus), []).append(row)
    summary = {}
    for name, group in groups.items():
        entry = {}
        for key in ("last_test", "best_by_validation_test"):
            entry[key] = mean_and_interval([r[key] * 100 for r in group])
        entry["per_module_test_mean"] = list(np.mean([r["test"] for r in group], axis=0) * 100)
        entry["last_validation_mean"] = float(np.mean([r["validation"][-1] for r in group]) * 100)
        entry["seconds_mean"] = float(np.mean([r["seconds"] for r in group]))
        entry["tau"] = group[0].get("tau")
        summary[name] = entry
    summary.update(paired_differences(rows))
    return summary


def paired_differences(rows: list[dict]) -> dict:
    """TRGL minus VanGL per seed (same seed: same initialisation and data order), mean and t-based 95% interval."""
    by_key = {(r["arm"], r["mode"], r["seed"], r.get("tau")): r for r in rows}
    differences: dict[str, dict] = {}
    for (arm, mode, seed, tau), trgl in by_key.items():
        vangl = by_key.get(("vangl", mode, seed, None))
        if arm != "trgl" or vangl is None:
            continue
        name = f"trgl - vangl/{mode} tau={tau:g}"
        entry = differences.setdefault(name, {"last_test": [], "best_by_validation_test": []})
        for key in entry:
            entry[key].append((trgl[key] - vangl[key]) * 100)
    return {
        name: {"paired": True, **{key: mean_and_interval(values) for key, values in entry.items()}}
        for name, entry in differences.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--test-size", type=int, default=10000)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--modules", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=10, help="epochs per module")
    parser.add_argument("--e2e-total-epochs", action="store_true", help="E2E trains K x epochs (same total budget)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--drop-last", action="store_true", help="drop the last partial batch of each epoch")
    parser.add_argument("--tau", type=float, default=10.0)
    parser.add_argument("--taus", nargs="+", type=float, help="TRGL arms for each of these taus (overrides --tau)")
    parser.add_argument("--laps", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["sequential"])
    parser.add_argument("--arms", nargs="+", default=["e2e", "vangl", "trgl"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="accuracy_cifar10")
    parser.add_argument("--resume", action="store_true", help="skip runs already in results/<name>.json")
    parser.add_argument("--render-only", nargs="+", help="re-render (and merge) the tables and plot of results JSONs")
    options = parser.parse_args()
    results = Path(__file__).parent / "results"
    if options.render_only:
        render(merge([json.loads(Path(path).read_text()) for path in options.render_only], options.name), results)
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
    results.mkdir(exist_ok=True)
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / "trgl-accuracy"
    previous = results / f"{options.name}.json"
    rows = json.loads(previous.read_text())["rows"] if options.resume and previous.exists() else []
    done = {(r["arm"], r["mode"], r["seed"], r.get("tau")) for r in rows}
    command = "python " + " ".join(sys.argv)
    payload = {"command": command, "options": vars(options), "rows": rows,
               "environment": {"torch": torch.__version__, "python": platform.python_version(),
                               "threads": options.threads, "date": time.strftime("%Y-%m-%d")}}  # fmt: skip
    for seed in options.seeds:
        for mode in options.modes:
            for arm in options.arms:
                if arm == "e2e" and mode != options.modes[0]:
                    continue
                for tau in (options.taus or [options.tau]) if arm == "trgl" else [None]:
                    if (arm, "sequential" if arm == "e2e" else mode, seed, tau) in done:
                        continue
                    output = scratch / options.name / f"{arm}-{mode}-{seed}-{tau}"
                    shutil.rmtree(output, ignore_errors=True)  # scratch: nothing of a run is kept but its row
                    rows.append(run(arm, mode, seed, tau, data, options, output))
                    render(payload, results)


def merge(payloads: list[dict], name: str) -> dict:
    """One payload holding every row of `payloads` (the options of the first, renamed)."""
    merged = dict(payloads[0])
    merged["options"] = {**payloads[0]["options"], "name": name}
    merged["command"] = " ; ".join(dict.fromkeys(payload["command"] for payload in payloads))
    merged["rows"] = [row for payload in payloads for row in payload["rows"]]
    return merged


def render(payload: dict, results: Path) -> None:
    """Write the JSON, the Markdown table (mean and t-based 95% interval over seeds) and the per-module plot."""
    options = argparse.Namespace(**payload["options"])
    command = payload["command"]
    summary = payload["summary"] = summarise(payload["rows"])
    write_atomically(results / f"{options.name}.json", json.dumps(payload, indent=2))
    lines = [f"# {options.name}", "", f"Command: `{command}`", "",
             "| arm / mode | last module test % (mean ± 95% CI) | best-by-validation test % | last module "
             "validation % | test % per module | seconds |", "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, entry in summary.items():
        last, best = entry["last_test"], entry["best_by_validation_test"]
        if entry.get("paired"):
            lines.append(f"| {name} (paired by seed) | {last['mean']:+.2f} ± {last['ci95']:.2f} (n={last['n']}) | "
                         f"{best['mean']:+.2f} ± {best['ci95']:.2f} | | | |")  # fmt: skip
            continue
        per_module = " / ".join(f"{v:.1f}" for v in entry["per_module_test_mean"])
        lines.append(
            f"| {name} | {last['mean']:.2f} ± {last['ci95']:.2f} (n={last['n']}) | {best['mean']:.2f} ± "
            f"{best['ci95']:.2f} | {entry['last_validation_mean']:.1f} | {per_module} | {entry['seconds_mean']:.0f} |"
        )
    write_atomically(results / f"{options.name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    plot_per_module(summary, options, results / f"{options.name}.png")
    if len({entry["tau"] for entry in summary.values() if entry.get("tau") is not None}) > 1:
        plot_tau_sensitivity(summary, options, results / f"{options.name}_tau.png")


def write_atomically(path: Path, text: str) -> None:
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(text)
    os.replace(scratch, path)


def plot_per_module(summary: dict, options: argparse.Namespace, path: Path) -> None:

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.5))
    for name, entry in summary.items():
        if entry.get("paired"):
            continue
        values = entry["per_module_test_mean"]
        axis.plot(range(1, len(values) + 1), values, marker="o", label=name)
    axis.set_xlabel("module")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(f"CIFAR-10, {options.train_size} images, ResNet-{options.depth}")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_tau_sensitivity(summary: dict, options: argparse.Namespace, path: Path) -> None:
    """Last-module test and validation accuracy of TRGL against tau (log scale), VanGL as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trgl = sorted((e["tau"], e) for e in summary.values() if e.get("tau") is not None and not e.get("paired"))
    figure, axis = plt.subplots(figsize=(5.5, 3.5))
    taus = [tau for tau, _ in trgl]
    axis.plot(taus, [e["last_test"]["mean"] for _, e in trgl], marker="o", label="TRGL last module, test")
    axis.plot(taus, [e["last_validation_mean"] for _, e in trgl], marker="s", ls="--", label="TRGL last, validation")
    for name, entry in summary.items():
        if name.startswith(("vangl", "e2e")):
            axis.axhline(entry["last_test"]["mean"], color="grey" if name.startswith("vangl") else "black",
                         ls=":", label=f"{name} last module, test")  # fmt: skip
    axis.set_xscale("log")
    axis.set_xlabel("tau")
    axis.set_ylabel("accuracy (%)")
    axis.set_title(f"tau sensitivity, K={options.modules}, {options.train_size} images, ResNet-{options.depth}")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
