"""Trigger every refused input and write the table of errors in docs/errors.md (the messages are the real ones).

python docs/bad_inputs.py            # rewrites docs/errors.md
python docs/bad_inputs.py --check    # fails if docs/errors.md is out of date (used by the tests)
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from torch import nn  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from trgl_hf import (  # noqa: E402
    CifarResNetConfig,
    CifarResNetForImageClassification,
    TRGLConfig,
    TRGLModel,
    TRGLTrainer,
    TRGLTrainingArguments,
    load_digits_dataset,
)

TARGET = Path(__file__).with_name("errors.md")


def cifar(**overrides) -> CifarResNetForImageClassification:
    torch.manual_seed(0)
    settings = dict(num_channels=1, depths=[1, 1, 1], hidden_sizes=[4, 8, 8], embedding_size=4, num_labels=10,
                    image_size=8)  # fmt: skip
    settings.update(overrides)
    return CifarResNetForImageClassification(CifarResNetConfig(**settings))


def model(**config) -> TRGLModel:
    return TRGLModel.from_base(cifar(), TRGLConfig(**{"num_modules": 3, **config}))


def args(out: str, **overrides) -> TRGLTrainingArguments:
    settings = dict(output_dir=out, trgl_mode="sequential", max_steps=1, per_device_train_batch_size=16,
                    report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True)  # fmt: skip
    settings.update(overrides)
    return TRGLTrainingArguments(**settings)


def cases(workdir: Path) -> list[tuple[str, Callable[[], object]]]:
    digits = load_digits_dataset()
    train = digits["train"].select(range(64))

    def train_with(dataset, **extra):
        return TRGLTrainer(model=model(), args=args(str(workdir / "run"), **extra), train_dataset=dataset).train()

    def different_run():
        out = str(workdir / "first")
        TRGLTrainer(model=model(), args=args(out), train_dataset=train).train()
        TRGLTrainer(model=model(tau=3.0), args=args(out), train_dataset=train).train()

    def different_resume():
        out = str(workdir / "second")
        TRGLTrainer(model=model(), args=args(out), train_dataset=train).train()
        TRGLTrainer(model=model(tau=3.0), args=args(out), train_dataset=train).train(resume_from_checkpoint=True)

    def long_sequences():
        base = GPT2LMHeadModel(GPT2Config(vocab_size=20, n_embd=16, n_layer=2, n_head=2, n_positions=16,
                                          bos_token_id=0, eos_token_id=0))  # fmt: skip
        rows = [list(range(20)) * 2] * 2
        dataset = Dataset.from_dict({"input_ids": rows, "labels": rows}).with_format("torch")
        lm = TRGLModel.from_base(base, TRGLConfig(num_modules=2))
        TRGLTrainer(model=lm, args=args(str(workdir / "lm")), train_dataset=dataset).train()

    def no_credentials():
        import huggingface_hub

        saved, huggingface_hub.get_token = huggingface_hub.get_token, lambda: None
        token = os.environ.pop("HF_TOKEN", None)
        try:
            TRGLTrainer(model=model(), args=args(str(workdir / "hub"), push_to_hub=True, hub_model_id="me/run"),
                        train_dataset=train)  # fmt: skip
        finally:
            huggingface_hub.get_token = saved
            if token is not None:
                os.environ["HF_TOKEN"] = token

    def conv_head_on_gpt2():
        base = GPT2LMHeadModel(GPT2Config(vocab_size=20, n_embd=16, n_layer=2, n_head=2, bos_token_id=0,
                                          eos_token_id=0))  # fmt: skip
        TRGLModel.from_base(base, TRGLConfig(num_modules=2, aux_head="conv"))

    def corrupted():
        folder = workdir / "whole"
        model().save_pretrained(folder)
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
        TRGLModel.from_pretrained(folder)

    def missing():
        folder = workdir / "whole-missing"
        model().save_pretrained(folder)
        (folder / "model.safetensors").unlink()
        TRGLModel.from_pretrained(folder)

    def stage_as_whole():
        folder = workdir / "stage"
        model().export_stage(1).save_pretrained(folder)
        TRGLModel.from_pretrained(folder)

    def labels_out_of_range():
        shifted = train.with_format(None).map(lambda row: {"labels": row["labels"]}, features=None)
        shifted = shifted.cast_column("labels", __import__("datasets").Value("int64"))
        train_with(shifted.map(lambda row: {"labels": row["labels"] + 10}).with_format("torch"))

    return [
        ("`num_modules=0`", lambda: TRGLConfig(num_modules=0)),
        ("more modules than residual blocks", lambda: model(num_modules=4)),
        ("`split` that does not sum to the blocks", lambda: model(split=[1, 1])),
        ("`split` with an empty module", lambda: TRGLConfig(split=[2, 0, 1])),
        ("`tau=0` (or negative, or NaN)", lambda: TRGLConfig(tau=0.0)),
        ("one tau per module, wrong count", lambda: TRGLConfig(num_modules=3, tau=[1.0, 2.0])),
        ("unknown `tau_schedule`", lambda: TRGLConfig(tau_schedule="cosine")),
        ("unknown `split_policy`", lambda: TRGLConfig(split_policy="random")),
        ("model the library cannot cut", lambda: TRGLModel.from_base(nn.Sequential(nn.Linear(2, 2)))),
        ("unknown `aux_head`", lambda: TRGLConfig(aux_head="mlp")),
        ("head that does not fit the family (a conv head on GPT-2)", conv_head_on_gpt2),
        ("unknown `trgl_mode`", lambda: args(str(workdir / "x"), trgl_mode="greedy")),
        ("unknown `trgl_hub_strategy`", lambda: args(str(workdir / "x"), trgl_hub_strategy="tags")),
        ("a plain model given to `TRGLTrainer`", lambda: TRGLTrainer(model=cifar(), args=args(str(workdir / "x")))),
        ("dataset without labels", lambda: train_with(train.remove_columns("labels"))),
        ("labels outside `num_labels`", labels_out_of_range),
        ("empty dataset", lambda: train_with(train.select([]))),
        ("images too small for the conv head's pooling", lambda: model(image_size=2, head_pool_size=2)),
        ("sequences longer than the model's positions", long_sequences),
        ("`output_dir` holding the stages of a different run", different_run),
        ("resuming from a checkpoint of a different configuration", different_resume),
        ("corrupted weight file", corrupted),
        ("missing weight file", missing),
        ("loading a stage folder as a whole TRGL model", stage_as_whole),
        ("`push_to_hub=True` without credentials", no_credentials),
    ]


def render() -> str:
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for description, trigger in cases(Path(workdir)):
            try:
                trigger()
            except ValueError as error:
                message = str(error).replace(workdir, "<tmp>").replace("|", "\\|").replace("\n", " ")
                rows.append(f"| {description} | `{type(error).__name__}` | {message} |")
            else:
                raise AssertionError(f"{description}: no ValueError was raised")
    header = [
        "# Refused inputs",
        "",
        "Every one of these raises a `ValueError` (or a subclass) before any training or writing. The messages below",
        "are the real ones, produced by `python docs/bad_inputs.py` (a test checks this file is up to date).",
        "",
        "| input | error | message |",
        "| --- | --- | --- |",
    ]
    return "\n".join(header + rows) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if TARGET.read_text() == text else "docs/errors.md is out of date: run python docs/bad_inputs.py")
    TARGET.write_text(text)
    print(text)
