"""Accuracy of end-to-end vs VanGL vs TRGL on real CIFAR-10 (the JPEG copy in ../shared/data/cifar10).

Training images: a stratified prefix of the official train split; validation: the next 1,000 train rows (model and
tau selection only); test: the official test split (or its stratified prefix). Per-module accuracy is recorded
(the stagnation curve) and the best module is chosen on validation.

    python -m benchmarks.accuracy_cifar10 --train-size 1000 --depth 20 --modules 4 --epochs 10 --seeds 0 1
    python -m benchmarks.accuracy_cifar10 --quick    # smoke run on scikit-learn's digits (no data folder), temp output

The calibration recipe of ../shared/reference/calibration.md (K = 9 one-block modules, 35 epochs per module):

    python -m benchmarks.accuracy_cifar10 --train-size 1000 --test-size 2000 --modules 9 --epochs 35 --tau 3 \
        --lr 0.1 --weight-decay 2e-4 --label-smoothing 0.1 --drop-last --seeds 0 1 2

Results are rewritten after every run (an interrupted sweep keeps what finished) and `--resume` skips the runs a
previous invocation with the same `--name` already recorded. `--taus` sweeps TRGL's tau (the tau sensitivity study);
`--render-only a.json b.json --name merged` merges the rows of several result files into one table. Outputs
`<name>.json/.md/.png` in `--out-dir` (default `benchmarks/results`; a temporary folder with `--quick`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import data, env
from benchmarks.reports import accuracy_cifar10 as render_report
from trgl_hf import (
    CifarResNetConfig,
    CifarResNetForImageClassification,
    TRGLConfig,
    TRGLModel,
    TRGLTrainer,
    TRGLTrainingArguments,
)


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


def main(argv: list[str] | None = None) -> None:
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
    parser.add_argument("--out-dir", default=None, help="default benchmarks/results (a temporary folder with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: digits as 32x32 images, ResNet-8, K = 2")
    options = parser.parse_args(argv)
    validation_rows = 1000
    if options.quick:
        options.train_size, options.test_size, options.depth, options.modules, options.epochs = 64, 64, 8, 2, 1
        options.arms, validation_rows = ["e2e", "vangl", "trgl"], 64
    results = env.out_dir(options.out_dir, options.quick, "accuracy_cifar10")
    if options.render_only:
        payloads = [json.loads(Path(path).read_text()) for path in options.render_only]
        render_report.render(render_report.merge(payloads, options.name), results)
        return
    env.setup(options.threads)
    cifar = env.shared_data("cifar10")
    if options.quick:
        images = data.digits_as_cifar(options.train_size + validation_rows, options.test_size)
    elif cifar is None:
        raise SystemExit("CIFAR-10 not found: put shared/data beside the repository or set SHARED_DATA.")
    else:
        images = data.cifar10(cifar, options.train_size + validation_rows, options.test_size)
    (train_images, train_labels), (test_images, test_labels) = images["train"], images["test"]
    splits = {
        "train": data.Augmented(train_images[: options.train_size], train_labels[: options.train_size]),
        "validation": data.Plain(train_images[options.train_size :], train_labels[options.train_size :]),
        "test": data.Plain(test_images, test_labels),
    }
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / "trgl-accuracy"
    previous = results / f"{options.name}.json"
    rows = json.loads(previous.read_text())["rows"] if options.resume and previous.exists() else []
    done = {(r["arm"], r["mode"], r["seed"], r.get("tau")) for r in rows}
    command = env.command_line("accuracy_cifar10", argv)
    payload = {"command": command, "options": vars(options), "rows": rows,
               "environment": {"torch": torch.__version__, "python": platform.python_version(),
                               "threads": options.threads, "date": time.strftime("%Y-%m-%d"),
                               "data": "digits (quick)" if options.quick else "cifar10"}}  # fmt: skip
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
                    rows.append(run(arm, mode, seed, tau, splits, options, output))
                    render_report.render(payload, results)


if __name__ == "__main__":
    main()
