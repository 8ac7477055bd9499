"""What a run leaves for the user's next line of code: `save_model()` then `AutoModelFor*.from_pretrained(output_dir)`
and `pipeline(model=output_dir)`, `push_to_hub` / `hub_strategy` (against the loopback fake Hub of tests/fakehub.py),
and the command lines (`--help` of every recipe, `HfArgumentParser` over `TRGLTrainingArguments`)."""

from __future__ import annotations

import runpy
import sys

import numpy as np
import pytest
import torch
from huggingface_hub import constants
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    DataCollatorForLanguageModeling,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    pipeline,
)

from trgl_hf import TRGLTrainer, TRGLTrainingArguments

from .conftest import (
    REPO_ROOT,
    image_collate,
    image_dataset,
    image_processor,
    image_transform,
    k1,
    lm_dataset,
    pixel_dataset,
    plain_args,
    text_dataset,
    tiny_bert,
    tiny_gpt2,
    tiny_resnet,
    tiny_vit,
    trgl_args,
    wrap,
)

SCORE_TOL = 1e-5  # a model loaded from disk against the trainer's in-memory predictions (float32, other batching)


# ------------------------------------------------------------------------------------------- save_model


def _text_run(tmp_path, tokenizer, collator, num_modules=2):
    data = text_dataset(tokenizer)
    model = wrap(tiny_bert(), num_modules) if num_modules > 1 else k1(tiny_bert())
    trainer = TRGLTrainer(model=model, args=trgl_args(tmp_path / "out", learning_rate=1e-2), train_dataset=data,
                          eval_dataset=data, data_collator=collator, processing_class=tokenizer)  # fmt: skip
    trainer.train()
    trainer.evaluate()
    return trainer, data


def test_save_model_loads_with_auto_class_and_predicts_like_predict(tmp_path, tokenizer, collator):
    """run_glue's `trainer.save_model()` at K = 2, then
    `AutoModelForSequenceClassification.from_pretrained(output_dir)` (no `trust_remote_code`, nothing else): it
    loads, carries the label names, and its logits equal the trainer's `predict()` predictions (1e-5), i.e. the
    module `predict()` returns."""
    trainer, data = _text_run(tmp_path, tokenizer, collator)
    trainer.save_model()
    output_dir = trainer.args.output_dir
    model = AutoModelForSequenceClassification.from_pretrained(output_dir).eval()
    assert model.config.id2label == {0: "negative", 1: "positive"}
    batch = tokenizer.pad(data.remove_columns("label")[:], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits.numpy()
    np.testing.assert_allclose(logits, trainer.predict(data).predictions, rtol=SCORE_TOL, atol=SCORE_TOL)


def test_save_model_then_pipeline(tmp_path, tokenizer, collator):
    """`pipeline("text-classification", model=output_dir)` after `save_model()` (the tokenizer given as
    `processing_class` is saved with it): answers with the label names, the label of the largest logit and its
    softmax score (1e-5) of the model loaded from `output_dir`."""
    trainer, data = _text_run(tmp_path, tokenizer, collator)
    trainer.save_model()
    output_dir = trainer.args.output_dir
    classify = pipeline("text-classification", model=output_dir)
    model = AutoModelForSequenceClassification.from_pretrained(output_dir).eval()
    for sentence in ("a gripping film", "boring and too long"):
        with torch.no_grad():
            probabilities = model(**tokenizer(sentence, return_tensors="pt")).logits.softmax(-1)[0]
        answer = classify(sentence)[0]
        assert answer["label"] == model.config.id2label[int(probabilities.argmax())]
        assert answer["score"] == pytest.approx(float(probabilities.max()), abs=SCORE_TOL)


def test_k1_save_model_equals_trainers(tmp_path, tokenizer, collator):
    """K = 1: what `save_model()` writes loads with `AutoModelForSequenceClassification` to the weights Trainer's
    `save_model()` writes for the same training (1e-6), with the same config class and label names."""
    data = text_dataset(tokenizer)
    folders = {}
    for kind, cls, make_args, model in (("plain", Trainer, plain_args, tiny_bert()),
                                        ("trgl", TRGLTrainer, trgl_args, k1(tiny_bert()))):  # fmt: skip
        trainer = cls(model=model, args=make_args(tmp_path / kind), train_dataset=data, data_collator=collator,
                      processing_class=tokenizer)  # fmt: skip
        trainer.train()
        trainer.save_model()
        folders[kind] = trainer.args.output_dir
    plain = AutoModelForSequenceClassification.from_pretrained(folders["plain"])
    mine = AutoModelForSequenceClassification.from_pretrained(folders["trgl"])
    assert type(mine) is type(plain) and mine.config.id2label == plain.config.id2label
    for name, tensor in plain.state_dict().items():
        torch.testing.assert_close(mine.state_dict()[name], tensor, rtol=1e-6, atol=1e-6, msg=name)


def test_save_model_causal_lm_generates_in_a_pipeline(tmp_path, tokenizer):
    """run_clm: `save_model()` at K = 2, then `AutoModelForCausalLM.from_pretrained(output_dir)` and
    `pipeline("text-generation", model=output_dir)`: greedy generation gives the loaded model's own tokens (exact)."""
    data = lm_dataset(tokenizer)
    trainer = TRGLTrainer(model=wrap(tiny_gpt2(), 2), args=trgl_args(tmp_path / "out"), train_dataset=data,
                          data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                          processing_class=tokenizer)  # fmt: skip
    trainer.train()
    trainer.save_model()
    output_dir = trainer.args.output_dir
    model = AutoModelForCausalLM.from_pretrained(output_dir).eval()
    prompt = tokenizer("the film", return_tensors="pt")
    expected = model.generate(**prompt, max_new_tokens=4, do_sample=False)[0, prompt["input_ids"].shape[1] :]
    generate = pipeline("text-generation", model=output_dir)
    answer = generate("the film", max_new_tokens=4, do_sample=False, return_tensors=True)[0]
    assert list(answer["generated_token_ids"][-len(expected) :]) == expected.tolist()


def test_save_model_image_classifier_in_a_pipeline(tmp_path):
    """run_image_classification: `save_model()` at K = 2 with the image processor as `processing_class`, then
    `pipeline("image-classification", model=output_dir)` on a PIL image: the top label is the loaded model's argmax
    and its score the softmax (1e-5)."""
    processor = image_processor()
    data = image_dataset()
    data.set_transform(image_transform(processor))
    trainer = TRGLTrainer(model=wrap(tiny_vit(), 2), args=trgl_args(tmp_path / "out", remove_unused_columns=False),
                          train_dataset=data, data_collator=image_collate, processing_class=processor)  # fmt: skip
    trainer.train()
    trainer.save_model()
    output_dir = trainer.args.output_dir
    image = image_dataset(rows=1, seed=5)[0]["image"]
    model = AutoModelForImageClassification.from_pretrained(output_dir).eval()
    with torch.no_grad():
        probabilities = model(**processor(image, return_tensors="pt")).logits.softmax(-1)[0]
    answer = pipeline("image-classification", model=output_dir)(image)[0]
    assert answer["label"] == model.config.id2label[int(probabilities.argmax())]
    assert answer["score"] == pytest.approx(float(probabilities.max()), abs=SCORE_TOL)


# ------------------------------------------------------------------------------------------- Hub

REPO = "fake-user/conformance"


class Commits(TrainerCallback):
    """How many commits the Hub had received at each optimizer step (the repository's creation aside)."""

    def __init__(self, hub):
        self.hub, self.counts = hub, []

    def on_step_end(self, args, state, control, **kwargs):
        self.counts.append(len([c for c in self.hub.commits if c["summary"] != "initial commit"]))


def _hub_trainer(tmp_path, fake_hub, monkeypatch, callbacks=(), **overrides):
    """A run_glue-style script with `--push_to_hub --hub_model_id ... --hub_token ...`: the endpoint comes from the
    environment (`HF_ENDPOINT`), as for a user; no trgl_hf-specific argument."""
    monkeypatch.setattr(constants, "ENDPOINT", fake_hub.endpoint)
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.endpoint)
    settings = dict(push_to_hub=True, hub_model_id=REPO, hub_token="hf_fake", **overrides)
    return TRGLTrainer(model=wrap(tiny_resnet(), 2, aux_head="linear"), args=trgl_args(tmp_path / "out", **settings),
                       train_dataset=pixel_dataset(), callbacks=list(callbacks))  # fmt: skip


def test_push_to_hub_leaves_a_loadable_model_on_main(tmp_path, fake_hub, monkeypatch):
    """`push_to_hub=True, hub_model_id=...` (default `hub_strategy="every_save"`): after `train()`, and again after
    run_glue's closing `trainer.push_to_hub(finetuned_from=..., tasks=...)`, the repository's `main` holds a model
    that `AutoModelForImageClassification.from_pretrained` loads (config.json + model.safetensors)."""
    trainer = _hub_trainer(tmp_path, fake_hub, monkeypatch)
    trainer.train()
    assert {"config.json", "model.safetensors"} <= set(fake_hub.tree(REPO, "main"))
    trainer.push_to_hub(finetuned_from="tiny-resnet", tasks="image-classification")
    pulled = fake_hub.materialize(REPO, "main", tmp_path / "pulled")
    model = AutoModelForImageClassification.from_pretrained(pulled)
    assert model.config.num_labels == 3


def test_hub_strategy_end_pushes_nothing_during_training(tmp_path, fake_hub, monkeypatch):
    """`hub_strategy="end"`: no commit reaches the Hub while training runs (creating the repository before training,
    as Trainer does, is allowed); after `train()` `main` holds the model."""
    commits = Commits(fake_hub)
    trainer = _hub_trainer(tmp_path, fake_hub, monkeypatch, callbacks=[commits], hub_strategy="end")
    trainer.train()
    assert commits.counts and set(commits.counts) == {0}
    assert {"config.json", "model.safetensors"} <= set(fake_hub.tree(REPO, "main"))


@pytest.mark.parametrize("strategy", ["checkpoint", "all_checkpoints"])
def test_checkpoint_hub_strategies_are_honoured_or_refused_up_front(tmp_path, fake_hub, monkeypatch, strategy):
    """`hub_strategy="checkpoint"` / `"all_checkpoints"` (push Trainer checkpoints to resume from): never silently
    ignored — either refused with a `ValueError` naming `hub_strategy` before training, or a `last-checkpoint` /
    `checkpoint-*` folder reaches the Hub."""
    try:
        trainer = _hub_trainer(tmp_path, fake_hub, monkeypatch, hub_strategy=strategy, save_strategy="steps",
                               save_steps=2)  # fmt: skip
    except ValueError as error:
        assert "hub_strategy" in str(error)
        assert not fake_hub.commits
        return
    trainer.train()
    pushed = {path.split("/")[0] for branch in fake_hub.branches(REPO) for path in fake_hub.tree(REPO, branch)}
    assert any(name == "last-checkpoint" or name.startswith("checkpoint-") for name in pushed), sorted(pushed)


# ------------------------------------------------------------------------------------------- command lines

RECIPES = sorted(path.name for path in (REPO_ROOT / "recipes").glob("*.py") if path.name != "common.py")


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_help(recipe, monkeypatch, capsys):
    """`python recipes/<recipe> --help` — the first thing a newcomer types — prints the usage with the TRGL and the
    Trainer flags and exits with status 0 (run in process: the script's `__main__` with `sys.argv` set)."""
    monkeypatch.syspath_prepend(str(REPO_ROOT / "recipes"))
    monkeypatch.setattr(sys, "argv", [recipe, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO_ROOT / "recipes" / recipe), run_name="__main__")
    assert exit_info.value.code in (0, None)
    usage = capsys.readouterr().out
    assert "--trgl_mode" in usage and "--output_dir" in usage and "--learning_rate" in usage


def test_hf_argument_parser_over_trgl_training_arguments(tmp_path):
    """`HfArgumentParser((TRGLTrainingArguments,))` as the example scripts build it: `parse_args_into_dataclasses`
    of a command line sets TRGL and Trainer fields alike, `format_help()` renders every help string, and
    `parse_dict` (a JSON / YAML config) gives the same arguments."""
    parser = HfArgumentParser((TRGLTrainingArguments,))
    command = ["--output_dir", str(tmp_path), "--trgl_mode", "sequential", "--max_steps", "3", "--learning_rate",
               "0.01", "--report_to", "none", "--use_cpu", "--trgl_prefix_cache", "never"]  # fmt: skip
    (args,) = parser.parse_args_into_dataclasses(command)
    assert isinstance(args, TRGLTrainingArguments)
    assert (args.trgl_mode, args.max_steps, args.learning_rate, args.trgl_prefix_cache) == ("sequential", 3, 0.01,
                                                                                             "never")  # fmt: skip
    assert "--trgl_prefix_cache_max_memory" in parser.format_help()
    (from_dict,) = parser.parse_dict({"output_dir": str(tmp_path), "trgl_mode": "sequential", "max_steps": 3,
                                      "learning_rate": 0.01, "report_to": "none", "use_cpu": True,
                                      "trgl_prefix_cache": "never"})  # fmt: skip
    assert from_dict.to_dict() == args.to_dict()
