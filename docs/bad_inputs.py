"""Trigger every refused input and write the table of errors in docs/errors.md (the messages are the real ones).

python docs/bad_inputs.py            # rewrites docs/errors.md
python docs/bad_inputs.py --check    # fails if docs/errors.md is out of date (used by the tests)
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from torch import nn  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    ViTConfig,
    ViTForImageClassification,
)
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
from trgl_hf.training.run_lock import RunLock  # noqa: E402

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


@dataclass(frozen=True)
class Case:
    """One refused input: what the user did, the field or column the message must name, and how to trigger it.

    `trains_first`: the setup itself trains a run (e.g. to resume it later), so stages may exist afterwards.
    """

    description: str
    field: str
    trigger: Callable[[], object]
    trains_first: bool = False


def bert(**overrides) -> TRGLModel:
    torch.manual_seed(0)
    settings = dict(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                    max_position_embeddings=16, type_vocab_size=2, num_labels=3)  # fmt: skip
    settings.update(overrides)
    return TRGLModel.from_base(BertForSequenceClassification(BertConfig(**settings)), TRGLConfig(num_modules=2))


def gpt2_lm() -> TRGLModel:
    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(vocab_size=20, n_embd=16, n_layer=2, n_head=2, n_positions=16,
                                      bos_token_id=0, eos_token_id=0))  # fmt: skip
    return TRGLModel.from_base(base, TRGLConfig(num_modules=2))


def untied_flag_but_tied_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(vocab_size=20, n_embd=16, n_layer=2, n_head=2, n_positions=16,
                                      bos_token_id=0, eos_token_id=0))  # fmt: skip
    base.config.tie_word_embeddings = False  # the weights stay shared
    return base


def vit() -> TRGLModel:
    torch.manual_seed(0)
    base = ViTForImageClassification(ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                               intermediate_size=32, image_size=16, patch_size=4, num_labels=3))  # fmt: skip
    return TRGLModel.from_base(base, TRGLConfig(num_modules=2))


def cases(workdir: Path) -> list[Case]:
    digits = load_digits_dataset()
    train = digits["train"].select(range(64))
    text = Dataset.from_dict({"input_ids": [[2, 5, 7, 9]] * 8, "labels": [0, 1, 2, 0, 1, 2, 0, 1]})

    def train_with(dataset, trgl_model=None, **extra):
        trainer = TRGLTrainer(model=trgl_model or model(), args=args(str(workdir / "run"), **extra),
                              train_dataset=dataset)  # fmt: skip
        return trainer.train()

    def first_run(out, **extra):
        TRGLTrainer(model=model(), args=args(out, **extra), train_dataset=train).train()

    def different_run():
        out = str(workdir / "first")
        first_run(out)
        TRGLTrainer(model=model(tau=3.0), args=args(out), train_dataset=train).train()

    def different_resume():
        out = str(workdir / "second")
        first_run(out)
        TRGLTrainer(model=model(tau=3.0), args=args(out), train_dataset=train).train(resume_from_checkpoint=True)

    def different_data_resume():
        out = str(workdir / "third")
        first_run(out)
        other = digits["train"].select(range(64, 128))
        TRGLTrainer(model=model(), args=args(out), train_dataset=other).train(resume_from_checkpoint=True)

    def foreign_checkpoint():
        out = str(workdir / "fourth")
        first_run(out, save_strategy="steps", save_steps=1, max_steps=2)
        checkpoint = workdir / "fourth-copy" / "phases" / "module-02" / "checkpoint-1"
        checkpoint.mkdir(parents=True)
        TRGLTrainer(model=model(), args=args(str(workdir / "fourth-copy")), train_dataset=train).train(
            resume_from_checkpoint=str(checkpoint)
        )

    def long_sequences():
        rows = [list(range(20)) * 2] * 2
        dataset = Dataset.from_dict({"input_ids": rows, "labels": rows}).with_format("torch")
        TRGLTrainer(model=gpt2_lm(), args=args(str(workdir / "lm")), train_dataset=dataset).train()

    def lm_labels_of_another_shape():
        dataset = Dataset.from_dict({"input_ids": [[1, 2, 3, 4]] * 4, "labels": [[1, 2]] * 4})
        TRGLTrainer(model=gpt2_lm(), args=args(str(workdir / "lm2")), train_dataset=dataset).train()

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

    def mean_head_on_gpt2_classifier():
        base = GPT2ForSequenceClassification(GPT2Config(vocab_size=20, n_embd=16, n_layer=2, n_head=2, num_labels=2,
                                                        pad_token_id=0))  # fmt: skip
        TRGLModel.from_base(base, TRGLConfig(num_modules=2, aux_head="mean"))

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

    def labels(values, trgl_model=None, **columns):
        data = {"pixel_values": train.with_format("numpy")["pixel_values"][: len(values)], **columns}
        if trgl_model is not None:
            data = {"input_ids": [[2, 5, 7, 9]] * len(values), **columns}
        return train_with(Dataset.from_dict({**data, "labels": values}), trgl_model)

    def pixels(array):
        return train_with(Dataset.from_dict({"pixel_values": array, "labels": [0] * len(array)}).with_format("torch"))

    def unwritable_output_dir():  # a path under a file: not creatable, whoever runs it (root ignores permissions)
        blocker = workdir / "a-file"
        blocker.write_text("not a folder")
        TRGLTrainer(model=model(), args=args(str(blocker / "run")), train_dataset=train).train()

    def output_dir_in_use():
        out = workdir / "busy"
        lock = RunLock(out).acquire()
        try:
            TRGLTrainer(model=model(), args=args(str(out)), train_dataset=train).train()
        finally:
            lock.release()

    def decoder_classifier_without_pad():
        base = GPT2ForSequenceClassification(GPT2Config(vocab_size=20, n_embd=16, n_layer=2, n_head=2))
        TRGLModel.from_base(base, TRGLConfig(num_modules=2))

    def regression_with_smoothing():
        base = BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2,
                                                        num_attention_heads=2, intermediate_size=32, num_labels=1))  # fmt: skip
        TRGLModel.from_base(base, TRGLConfig(num_modules=2, label_smoothing=0.1))

    def question_answering():
        base = BertForQuestionAnswering(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2,
                                                   num_attention_heads=2, intermediate_size=32))  # fmt: skip
        TRGLModel.from_base(base, TRGLConfig(num_modules=2))

    def vit_wrong_size():
        images = np.random.default_rng(0).normal(size=(4, 3, 8, 8)).astype(np.float32)
        dataset = Dataset.from_dict({"pixel_values": images, "labels": [0, 1, 2, 0]}).with_format("torch")
        TRGLTrainer(model=vit(), args=args(str(workdir / "vit")), train_dataset=dataset).train()

    uint8 = (train.with_format("numpy")["pixel_values"][:4] * 255).astype(np.uint8)
    three_channels = np.repeat(train.with_format("numpy")["pixel_values"][:4], 3, axis=1)
    return [
        Case("`num_modules=0`", "num_modules", lambda: TRGLConfig(num_modules=0)),
        Case("`num_modules=2.5`", "num_modules", lambda: TRGLConfig(num_modules=2.5)),
        Case('`num_modules="3"`', "num_modules", lambda: TRGLConfig(num_modules="3")),
        Case("misspelled `TRGLConfig` field", "num_module", lambda: TRGLConfig(num_module=3)),
        Case("more modules than residual blocks", "between 1 and 3", lambda: model(num_modules=4)),
        Case("`split` that does not sum to the blocks", "split", lambda: model(split=[1, 1])),
        Case("`split` with an empty module", "split", lambda: TRGLConfig(split=[2, 0, 1])),
        Case("fractional `split`", "split", lambda: TRGLConfig(split=[1.5, 1.5])),
        Case("`tau=0` (or negative, or NaN)", "tau", lambda: TRGLConfig(tau=0.0)),
        Case("one tau per module, wrong count", "tau", lambda: TRGLConfig(num_modules=3, tau=[1.0, 2.0])),
        Case("a tau list with the multipliers schedule", "tau_schedule",
             lambda: TRGLConfig(num_modules=2, tau=[1.0, 2.0], tau_schedule="multipliers")),
        Case("unknown `tau_schedule`", "tau_schedule", lambda: TRGLConfig(tau_schedule="cosine")),
        Case("unknown `split_policy`", "split_policy", lambda: TRGLConfig(split_policy="random")),
        Case("unknown `aux_head`", "aux_head", lambda: TRGLConfig(aux_head="mlp")),
        Case("`from_base` keywords next to a `config`", "num_modules",
             lambda: TRGLModel.from_base(cifar(), TRGLConfig(num_modules=3), num_modules=2)),
        Case("model the library cannot train", "Sequential", lambda: TRGLModel.from_base(nn.Sequential(nn.Linear(2, 2)))),
        Case("a task class the library does not train (question answering)", "BertForQuestionAnswering",
             question_answering),
        Case("decoder classifier without `pad_token_id`", "pad_token_id", decoder_classifier_without_pad),
        Case("label smoothing on a regression head", "label_smoothing", regression_with_smoothing),
        Case("head that does not fit the family (a conv head on GPT-2)", "aux_head", conv_head_on_gpt2),
        Case("a mean head on a model with a final norm (GPT-2's `ln_f`)", "aux_head", mean_head_on_gpt2_classifier),
        Case("images too small for the conv head's pooling", "head_pool_size",
             lambda: model(image_size=2, head_pool_size=2)),
        Case("unknown `trgl_mode`", "trgl_mode", lambda: args(str(workdir / "x"), trgl_mode="greedy")),
        Case("fractional `trgl_laps`", "trgl_laps", lambda: args(str(workdir / "x"), trgl_laps=1.5)),
        Case("unknown `trgl_hub_strategy`", "trgl_hub_strategy",
             lambda: args(str(workdir / "x"), trgl_hub_strategy="tags")),
        Case("unknown `trgl_prefix_cache_dtype`", "trgl_prefix_cache_dtype",
             lambda: args(str(workdir / "x"), trgl_prefix_cache_dtype="int8")),
        Case("a `trgl_prefix_cache_max_memory` that is not a size", "8GiB",
             lambda: args(str(workdir / "x"), trgl_prefix_cache_max_memory="plenty")),
        Case("unknown `trgl_offload`", "trgl_offload", lambda: args(str(workdir / "x"), trgl_offload="cpu")),
        Case("`trgl_offload='disk'` in parallel mode", "trgl_offload",
             lambda: TRGLTrainer(model=model(), args=args(str(workdir / "x"), trgl_mode="parallel",
                                                          trgl_offload="disk"))),
        Case("an epoch count for a streaming dataset", "max_steps",
             lambda: TRGLTrainer(model=model(), args=args(str(workdir / "x"), max_steps=-1, num_train_epochs=2),
                                 train_dataset=train.to_iterable_dataset())),
        Case("a plain model given to `TRGLTrainer`", "TRGLModel",
             lambda: TRGLTrainer(model=cifar(), args=args(str(workdir / "x")))),
        Case("dataset without labels", "label", lambda: train_with(train.remove_columns("labels"))),
        Case("labels outside `num_labels`", "num_labels", lambda: labels([0, 12, 3, 1])),
        Case("string labels", "non-numeric", lambda: labels(["cat", "dog", "cat", "dog"])),
        Case("float labels for a single-label classifier", "problem_type", lambda: labels([0.5, 1.0, 0.0, 1.0])),
        Case("one-hot rows for a single-label classifier", "problem_type", lambda: labels([[0, 1] + [0] * 8] * 4)),
        Case("every label is -100", "-100", lambda: labels([-100] * 4)),
        Case("empty dataset", "train_dataset", lambda: train_with(train.select([]))),
        Case("integer (uint8) pixels", "pixel_values", lambda: pixels(uint8)),
        Case("images with the wrong number of channels", "pixel_values", lambda: pixels(three_channels)),
        Case("images of another size than a ViT's position embeddings", "16x16", vit_wrong_size),
        Case("token ids outside the vocabulary", "input_ids",
             lambda: train_with(Dataset.from_dict({"input_ids": [[2, 5, 70, 9]] * 4, "labels": [0, 1, 2, 0]}), bert())),
        Case("token type ids outside `type_vocab_size`", "token_type_ids",
             lambda: train_with(text.add_column("token_type_ids", [[0, 0, 3, 3]] * 8), bert())),
        Case("sequences longer than the model's positions", "input_ids", long_sequences),
        Case("causal-LM labels of another shape than the tokens", "labels", lambda: lm_labels_of_another_shape()),
        Case("a batch larger than the dataset with `dataloader_drop_last`", "per_device_train_batch_size",
             lambda: train_with(train.select(range(8)), dataloader_drop_last=True)),
        Case("an `output_dir` that cannot be written", "output_dir", unwritable_output_dir),
        Case("`output_dir` in use by another run", "output_dir", output_dir_in_use),
        Case("`output_dir` holding the stages of a different run", "output_dir", different_run, trains_first=True),
        Case("resuming from a checkpoint of a different configuration", "TRGLConfig", different_resume,
             trains_first=True),
        Case("resuming with different training data", "train_dataset", different_data_resume, trains_first=True),
        Case("resuming from a checkpoint path that does not exist", "resume_from_checkpoint",
             lambda: TRGLTrainer(model=model(), args=args(str(workdir / "gone")), train_dataset=train).train(
                 resume_from_checkpoint=str(workdir / "no" / "checkpoint-5"))),
        Case("resuming from another run's checkpoint folder", "another run", foreign_checkpoint, trains_first=True),
        Case("`resume_from_checkpoint=True` with nothing to resume", "resume_from_checkpoint",
             lambda: TRGLTrainer(model=model(), args=args(str(workdir / "empty")), train_dataset=train).train(
                 resume_from_checkpoint=True)),
        Case("corrupted weight file", "model.safetensors", corrupted),
        Case("missing weight file", "model.safetensors", missing),
        Case("loading a stage folder as a whole TRGL model", "AutoModel", stage_as_whole),
        Case("`push_to_hub=True` without credentials", "hub_token", no_credentials),
        Case("`label_smoothing_factor` and another `TRGLConfig.label_smoothing`", "label_smoothing",
             lambda: TRGLTrainer(model=model(label_smoothing=0.2), args=args(str(workdir / "ls"),
                                 label_smoothing_factor=0.1))),
        Case("`optimizers=(optimizer, scheduler)` for a run of several phases", "optimizer_cls_and_kwargs",
             lambda: TRGLTrainer(model=(m := model()), args=args(str(workdir / "opt")),
                                 optimizers=(torch.optim.SGD(m.parameters(), lr=0.1), None))),
        Case("`batch_eval_metrics` with a function as `compute_metrics` and K > 1", "compute_result",
             lambda: TRGLTrainer(model=model(), args=args(str(workdir / "bem"), batch_eval_metrics=True),
                                 compute_metrics=lambda prediction, compute_result: {})),
        Case("`compute_metrics` for a causal language model", "compute_metrics",
             lambda: TRGLTrainer(model=gpt2_lm(), args=args(str(workdir / "lmm")),
                                 compute_metrics=lambda prediction: {})),
        Case("a `metric_for_best_model` the metrics do not report", "metric_for_best_model",
             lambda: TRGLTrainer(model=model(), args=args(str(workdir / "typo"), metric_for_best_model="acuracy"),
                                 train_dataset=train, eval_dataset=digits["validation"].select(range(16))).train()),
        Case("`hub_strategy='checkpoint'` with `push_to_hub`", "hub_strategy",
             lambda: args(str(workdir / "hs"), push_to_hub=True, hub_strategy="checkpoint")),
        Case("`trgl_save_stages` naming a stage the model does not have", "trgl_save_stages",
             lambda: TRGLTrainer(model=model(), args=args(str(workdir / "ss"), trgl_save_stages=[2, 5]))),
        Case("`aux_head='tied'` on a classifier", "aux_head",
             lambda: TRGLModel.from_base(BertForSequenceClassification(BertConfig(
                 vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)),
                 TRGLConfig(num_modules=2, aux_head="tied"))),
        Case("`aux_head='tied'` on a decoder whose LM head and `tie_word_embeddings` disagree", "tie_word_embeddings",
             lambda: TRGLModel.from_base(untied_flag_but_tied_gpt2(), TRGLConfig(num_modules=2, aux_head="tied"))),
        Case("`lm_loss_chunk_tokens=0`", "lm_loss_chunk_tokens", lambda: TRGLConfig(lm_loss_chunk_tokens=0)),
    ]  # fmt: skip


def render() -> str:
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for case in cases(Path(workdir)):
            try:
                case.trigger()
            except ValueError as error:
                message = str(error).replace(workdir, "<tmp>").replace("|", "\\|").replace("\n", " ")
                message = re.sub(r"host \S+, pid \d+", "host <host>, pid <pid>", message)
                rows.append(f"| {case.description} | `{type(error).__name__}` | {message} |")
            else:
                raise AssertionError(f"{case.description}: no ValueError was raised")
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
