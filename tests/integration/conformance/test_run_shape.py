"""Run-shaped behaviours with K >= 2: what callbacks, loggers and files see is compared with what `Trainer` does for
ONE run of the same total number of steps (sequential mode counts `max_steps` / epochs per module, so K = 2 x 4
steps is compared with `Trainer(max_steps=8)`). These are exact comparisons of integers, event names and file sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from trgl_hf import TRGLTrainer

from .conftest import (
    ORACLE_TOL,
    Recorder,
    accuracy,
    image_collate,
    image_dataset,
    image_processor,
    image_transform,
    lm_dataset,
    pixel_dataset,
    plain_args,
    strictly_increasing,
    text_dataset,
    tiny_bert,
    tiny_gpt2,
    tiny_resnet,
    tiny_vit,
    trgl_args,
    wrap,
)

PER_MODULE, K = 4, 2  # 16 rows / batch 4 = 4 steps per epoch


def shaped(tmp_path, mode="sequential", plain=True, trgl_budget=None, plain_budget=None, eval_data=True,
           compute_metrics=None, **args):  # fmt: skip
    """A K = 2 TRGL run (4 steps or 1 epoch per module) and, with `plain`, Trainer's run of the same total length,
    each with a `Recorder`. Returns (trgl trainer, its recorder, plain trainer, its recorder)."""
    data = pixel_dataset()
    trgl_budget = trgl_budget or dict(max_steps=PER_MODULE)
    if plain_budget is None:
        plain_budget = dict(max_steps=PER_MODULE * K) if "max_steps" in trgl_budget else dict(
            max_steps=-1, num_train_epochs=trgl_budget["num_train_epochs"] * K)  # fmt: skip
        if mode == "parallel":
            plain_budget = dict(trgl_budget)
    common = dict(train_dataset=data, eval_dataset=data.select(range(8)) if eval_data else None,
                  compute_metrics=compute_metrics)  # fmt: skip
    recorder = Recorder()
    trainer = TRGLTrainer(model=wrap(tiny_resnet(), K, aux_head="linear"), callbacks=[recorder],
                          args=trgl_args(tmp_path / "trgl", trgl_mode=mode, **{**args, **trgl_budget}),
                          **common)  # fmt: skip
    trainer.output = trainer.train()
    plain_trainer = plain_recorder = None
    if plain:
        plain_recorder = Recorder()
        plain_trainer = Trainer(model=tiny_resnet(), callbacks=[plain_recorder],
                                args=plain_args(tmp_path / "plain", **{**args, **plain_budget}), **common)  # fmt: skip
        plain_trainer.output = plain_trainer.train()
    return trainer, recorder, plain_trainer, plain_recorder


# ------------------------------------------------------------------------------------------- callbacks


@pytest.mark.parametrize("mode", ["sequential", "multilap", "parallel"])
def test_on_train_begin_and_end_fire_once(tmp_path, mode):
    """A callback sees one run: exactly one `on_train_begin` (first event) and one `on_train_end` (last training
    event), whatever the mode (K = 2; multilap 2 laps = 4 phases)."""
    _, recorder, _, _ = shaped(tmp_path, mode, plain=False, eval_data=False)
    names = [name for name, _ in recorder.events]
    assert names.count("on_train_begin") == 1 and names.count("on_train_end") == 1, names
    assert names[0] == "on_train_begin" and names[-1] == "on_train_end"


def test_on_step_end_sees_one_monotone_global_step(tmp_path):
    """`on_step_end` fires once per optimizer step with `state.global_step` strictly increasing over the whole run
    (1..8, as Trainer's 8-step run), and `state.max_steps` is the run's total (8) as in Trainer."""
    _, recorder, _, plain = shaped(tmp_path, eval_data=False)
    assert recorder.steps("on_step_end") == plain.steps("on_step_end") == list(range(1, 9))
    assert set(recorder.max_steps) == set(plain.max_steps) == {8}


def test_on_log_events_equal_trainer(tmp_path):
    """`logging_steps=3` (not a divisor of the 4 steps per module): `on_log` fires at the same global steps as
    Trainer's 8-step run (loss logs at the run's multiples 3, 6, strictly increasing, then the end-of-training
    summary), so a logger sees one run."""
    _, recorder, _, plain = shaped(tmp_path, eval_data=False, logging_steps=3)
    loss_steps = [log["_step"] for log in recorder.logs if "loss" in log]
    assert strictly_increasing(loss_steps)
    assert loss_steps == [log["_step"] for log in plain.logs if "loss" in log] == [3, 6]
    assert recorder.steps("on_log") == plain.steps("on_log")


PHASE_ENDS = {PER_MODULE, 2 * PER_MODULE}


def assert_trainer_steps_plus_phase_ends(mine, theirs):
    """Trainer's steps, each once, strictly increasing; the only extra steps allowed are the ends of the modules'
    phases (where TRGL evaluates / records a finished module: the documented difference)."""
    assert strictly_increasing(mine), mine
    assert set(theirs) <= set(mine) <= set(theirs) | PHASE_ENDS, (mine, theirs)


@pytest.mark.parametrize(("interval", "expected"), [(2, [2, 4, 6, 8]), (3, [3, 6, 8])])
def test_eval_strategy_steps(tmp_path, interval, expected):
    """`eval_strategy="steps"`, `eval_steps` 2 (phase ends fall on multiples) or 3 (they do not): `on_evaluate` fires
    at every one of Trainer's steps for the 8-step run (multiples of `eval_steps` and the last step), once, strictly
    increasing; the only other steps allowed are the phase ends (4, 8: each module is evaluated when it is final)."""
    _, recorder, _, plain = shaped(tmp_path, eval_strategy="steps", eval_steps=interval)
    assert plain.steps("on_evaluate") == expected
    assert_trainer_steps_plus_phase_ends(recorder.steps("on_evaluate"), plain.steps("on_evaluate"))


def test_eval_strategy_no_evaluates_only_at_phase_ends(tmp_path):
    """`eval_strategy="no"` with an `eval_dataset`: Trainer never evaluates; TRGL may evaluate each module when its
    phase ends (its stage's metrics, the best module) — at most once per phase end, strictly increasing — and never
    elsewhere."""
    _, recorder, _, plain = shaped(tmp_path)
    assert plain.steps("on_evaluate") == []
    assert_trainer_steps_plus_phase_ends(recorder.steps("on_evaluate"), [])


@pytest.mark.parametrize(("interval", "expected"), [(2, [2, 4, 6, 8]), (3, [3, 6, 8])])
def test_save_strategy_steps(tmp_path, interval, expected):
    """`save_strategy="steps"`, `save_steps` 2 or 3: `on_save` fires at every one of Trainer's steps for the 8-step
    run (multiples of `save_steps` and the last step), once, strictly increasing; the only other steps allowed are
    the phase ends (a module's end is saved)."""
    _, recorder, _, plain = shaped(tmp_path, save_strategy="steps", save_steps=interval, eval_data=False)
    assert plain.steps("on_save") == expected
    assert_trainer_steps_plus_phase_ends(recorder.steps("on_save"), plain.steps("on_save"))


def test_epoch_strategies(tmp_path):
    """`eval_strategy="epoch"`, `save_strategy="epoch"`, 1 epoch per module: `on_epoch_end`, `on_evaluate` and
    `on_save` fire at Trainer's steps for 2 epochs (4, 8)."""
    _, recorder, _, plain = shaped(tmp_path, trgl_budget=dict(max_steps=-1, num_train_epochs=1),
                                   eval_strategy="epoch", save_strategy="epoch")  # fmt: skip
    for event in ("on_epoch_end", "on_evaluate", "on_save"):
        assert plain.steps(event) == [4, 8], event
        assert recorder.steps(event) == plain.steps(event), event


def test_parallel_mode_event_sequence_equals_trainer(tmp_path):
    """Parallel mode is one phase: the whole sequence of (event, global step) — begin, steps, logs, evaluations,
    saves, end — equals Trainer's for the same `max_steps`, logging / eval / save every 2 steps."""
    _, recorder, _, plain = shaped(tmp_path, "parallel", logging_steps=2, eval_strategy="steps", eval_steps=2,
                                   save_strategy="steps", save_steps=2)  # fmt: skip
    assert recorder.events == plain.events


class CheckpointCount(TrainerCallback):
    def __init__(self, root):
        self.root, self.counts = Path(root), []

    def on_save(self, args, state, control, **kwargs):
        weights = [w for p in self.root.rglob("checkpoint-*") if p.is_dir() for w in p.glob("*.safetensors")]
        self.counts.append(len({(w.stat().st_dev, w.stat().st_ino) for w in weights}))  # hard links: one copy


def test_save_total_limit(tmp_path):
    """`save_steps=1, save_total_limit=2`: whenever a checkpoint is saved, at most 2 checkpoints' weights exist
    anywhere under `output_dir` (Trainer: the same bound), however the run is split into phases (the root
    `checkpoint-N` that `get_last_checkpoint` finds is a hard-link copy of the latest one: the same files, counted
    once)."""
    data = pixel_dataset()
    counter = CheckpointCount(tmp_path / "trgl")
    TRGLTrainer(model=wrap(tiny_resnet(), K, aux_head="linear"), callbacks=[counter], train_dataset=data,
                args=trgl_args(tmp_path / "trgl", save_strategy="steps", save_steps=1, save_total_limit=2,
                               max_steps=3)).train()  # fmt: skip
    plain = CheckpointCount(tmp_path / "plain")
    Trainer(model=tiny_resnet(), callbacks=[plain], train_dataset=data,
            args=plain_args(tmp_path / "plain", save_strategy="steps", save_steps=1, save_total_limit=2,
                            max_steps=6)).train()  # fmt: skip
    assert max(plain.counts) == 2
    assert len(counter.counts) == 6 and max(counter.counts) <= 2, counter.counts


# ------------------------------------------------------------------------------------------- files and loggers


def test_run_glue_ending_writes_trainers_files(tmp_path):
    """run_glue's ending — `train()`, `save_model()`, `log_metrics` / `save_metrics("train")`, `save_state()`,
    `evaluate()`, `save_metrics("eval")` — writes `trainer_state.json` (global_step 8 and the loss history at
    Trainer's steps, strictly increasing), `train_results.json` with every key of Trainer's, and `all_results.json`
    with both the train and the eval metrics."""
    trgl_trainer, _, plain_trainer, _ = shaped(tmp_path, logging_steps=2)
    written = {}
    for kind, trainer in (("trgl", trgl_trainer), ("plain", plain_trainer)):
        output_dir = Path(trainer.args.output_dir)
        trainer.save_model()
        train_metrics = {**json.loads((output_dir / "train_results.json").read_text()), "train_samples": 16} if (
            output_dir / "train_results.json").exists() else {"train_samples": 16}  # fmt: skip
        trainer.log_metrics("train", train_metrics)
        trainer.save_metrics("train", train_metrics)
        trainer.save_state()
        eval_metrics = trainer.evaluate()
        trainer.save_metrics("eval", eval_metrics)
        written[kind] = {name: json.loads((output_dir / name).read_text())
                         for name in ("trainer_state.json", "train_results.json", "all_results.json")}  # fmt: skip
    trgl, plain = written["trgl"], written["plain"]
    assert trgl["trainer_state.json"]["global_step"] == plain["trainer_state.json"]["global_step"] == 8
    steps = [e["step"] for e in trgl["trainer_state.json"]["log_history"] if "loss" in e]
    assert strictly_increasing(steps) and steps == [e["step"] for e in plain["trainer_state.json"]["log_history"]
                                                     if "loss" in e]  # fmt: skip
    assert set(plain["train_results.json"]) <= set(trgl["train_results.json"])
    assert {"train_loss", "train_runtime", "eval_loss"} <= set(trgl["all_results.json"])


def test_train_output_metrics_keys(tmp_path):
    """`train()` returns a `TrainOutput` whose metrics hold every key of Trainer's (`train_runtime`,
    `train_samples_per_second`, `train_steps_per_second`, `total_flos`, `train_loss`, `epoch`) and whose `global_step`
    is the run's total."""
    trainer, _, plain, _ = shaped(tmp_path, eval_data=False)
    trgl_output, plain_output = trainer.output, plain.output
    assert set(plain_output.metrics) <= set(trgl_output.metrics), sorted(set(plain_output.metrics) -
                                                                          set(trgl_output.metrics))  # fmt: skip
    assert trgl_output.global_step == plain_output.global_step == 8


def test_tensorboard_sees_one_strictly_increasing_loss_curve(tmp_path):
    """`report_to="tensorboard"`, `logging_steps=3`: one run folder, whose `train/loss` steps are Trainer's for the
    8-step run (3, 6), strictly increasing — no duplicated or shifted step where one module ends and the next
    begins."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    shaped(tmp_path, eval_data=False, logging_steps=3, report_to=["tensorboard"])
    curves = {}
    for kind in ("trgl", "plain"):
        runs = [p for p in (tmp_path / kind / "runs").glob("*") if p.is_dir()]
        assert len(runs) == 1, (kind, runs)
        events = EventAccumulator(str(runs[0]))
        events.Reload()
        curves[kind] = [s.step for s in events.Scalars("train/loss")]
    assert curves["plain"] == [3, 6]
    assert curves["trgl"] == curves["plain"]


# ------------------------------------------------------------------------------------------- resume


class Interrupt(TrainerCallback):
    """Raise KeyboardInterrupt (Ctrl-C) at the n-th optimizer step of the run."""

    def __init__(self, at: int):
        self.at, self.seen = at, 0

    def on_step_end(self, args, state, control, **kwargs):
        self.seen += 1
        if self.seen == self.at:
            raise KeyboardInterrupt


def test_get_last_checkpoint_after_an_interrupted_run_resumes_it(tmp_path):
    """run_glue's resume idiom: after a run interrupted (Ctrl-C) in module 2 (at step 5 of 2 x 3, checkpoints every
    step), `get_last_checkpoint(output_dir)` is not None, and `train(resume_from_checkpoint=that)` ends with the
    weights of an uninterrupted run (1e-6) and global step 6."""
    data = pixel_dataset()

    def trainer(folder, callbacks=()):
        return TRGLTrainer(model=wrap(tiny_resnet(), K, aux_head="linear"), callbacks=list(callbacks),
                           train_dataset=data, args=trgl_args(folder, save_strategy="steps", save_steps=1,
                                                               max_steps=3))  # fmt: skip

    reference = trainer(tmp_path / "reference")
    reference.train()
    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path / "run", [Interrupt(5)]).train()
    last = get_last_checkpoint(str(tmp_path / "run"))
    assert last is not None
    resumed = trainer(tmp_path / "run")
    output = resumed.train(resume_from_checkpoint=last)
    assert output.global_step == 6
    for (name, tensor), other in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(other, tensor, msg=lambda m, n=name: f"{n}: {m}", **ORACLE_TOL)


# ------------------------------------------------------------------------------------------- best model, metrics


def test_load_best_model_at_end_sets_best_model_checkpoint(tmp_path):
    """`load_best_model_at_end=True` (evaluation and saving every 2 steps, `metric_for_best_model="accuracy"`):
    after `train()`, `state.best_model_checkpoint` names an existing folder and `state.best_metric` is set, as with
    Trainer."""
    trainer, _, plain, _ = shaped(tmp_path, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
                                  load_best_model_at_end=True, metric_for_best_model="accuracy",
                                  compute_metrics=accuracy)  # fmt: skip
    assert plain.state.best_model_checkpoint is not None
    assert trainer.state.best_model_checkpoint is not None
    assert Path(trainer.state.best_model_checkpoint).is_dir()
    assert trainer.state.best_metric is not None


def test_metric_for_best_model_typo_is_refused_before_training(tmp_path):
    """`metric_for_best_model="acuracy"` (a typo of the default metric): a `ValueError` naming `metric_for_best_model`
    before any step runs and before any stage is written (Trainer itself only fails at its first evaluation)."""
    data = pixel_dataset()
    recorder = Recorder()
    with pytest.raises(ValueError, match="metric_for_best_model"):
        trainer = TRGLTrainer(model=wrap(tiny_resnet(), K, aux_head="linear"), callbacks=[recorder],
                              train_dataset=data, eval_dataset=data.select(range(8)),
                              args=trgl_args(tmp_path, eval_strategy="steps", eval_steps=2,
                                             metric_for_best_model="acuracy"))  # fmt: skip
        trainer.train()
    assert recorder.count("on_step_end") == 0
    assert not list(tmp_path.glob("stage-*"))


def test_evaluate_keys_k2(tmp_path):
    """`evaluate()` at K = 2 with the tutorial's `compute_metrics`: every key of Trainer's (`eval_loss`,
    `eval_accuracy`, `eval_runtime`, `eval_samples_per_second`, `eval_steps_per_second`, `epoch`) is there, plus the
    per-module keys (`eval_module_{k}_accuracy`, `eval_module_{k}_loss`, `eval_best_module`)."""
    data = pixel_dataset()
    trgl = TRGLTrainer(
        model=wrap(tiny_resnet(), K, aux_head="linear"),
        train_dataset=data,
        compute_metrics=accuracy,
        eval_dataset=data.select(range(8)),
        args=trgl_args(tmp_path / "t", max_steps=1),
    )
    plain = Trainer(model=tiny_resnet(), train_dataset=data, eval_dataset=data.select(range(8)),
                    compute_metrics=accuracy, args=plain_args(tmp_path / "p", max_steps=2))  # fmt: skip
    trgl.train()
    plain.train()
    mine, theirs = trgl.evaluate(), plain.evaluate()
    assert set(theirs) <= set(mine), sorted(set(theirs) - set(mine))
    assert {"eval_module_1_accuracy", "eval_module_2_loss", "eval_best_module"} <= set(mine)


def test_predict_test_loss_is_the_returned_modules(tmp_path, tokenizer, collator):
    """K = 3: `predict()` returns the predictions of the module chosen by the last `evaluate()`; its
    `metrics["test_loss"]` and `metrics["test_accuracy"]` are that module's (`test_module_{m}_*`, 1e-6), and its
    predictions are that module's logits. To choose a module other than the last one, whatever the training did, the
    user's `compute_metrics` reports `closeness` = -max |logits - stage 1's logits| (stage 1 run by hand), and
    `metric_for_best_model="closeness"` picks module 1."""
    data = text_dataset(tokenizer)
    reference = {}

    def closeness(eval_prediction):
        logits = np.asarray(eval_prediction.predictions)
        gap = float(np.abs(logits - reference["logits"]).max()) if "logits" in reference else 0.0
        return {**accuracy(eval_prediction), "closeness": -gap}

    model = wrap(tiny_bert(num_layers=3), 3)
    trainer = TRGLTrainer(model=model, train_dataset=data, eval_dataset=data, data_collator=collator,
                          compute_metrics=closeness, args=trgl_args(tmp_path, max_steps=2, learning_rate=1e-2,
                                                                    metric_for_best_model="closeness"))  # fmt: skip
    trainer.train()
    with torch.no_grad():
        reference["logits"] = model.export_stage(1)(
            **tokenizer.pad(data.remove_columns("label")[:], return_tensors="pt")
        ).logits.numpy()
    assert trainer.evaluate()["eval_best_module"] == 1
    output = trainer.predict(data)
    assert output.module == 1
    for name in ("loss", "accuracy"):
        assert output.metrics[f"test_{name}"] == pytest.approx(output.metrics[f"test_module_1_{name}"], rel=1e-6), name
    assert output.metrics["test_module_1_loss"] != pytest.approx(output.metrics["test_module_3_loss"], rel=1e-6)
    np.testing.assert_array_equal(output.predictions, output.module_predictions[:, 0])


# ------------------------------------------------------------------------------------------- data paths, K = 2


def test_padding_collator_sequential_does_not_depend_on_the_prefix_cache(tmp_path, tokenizer, collator):
    """run_glue's `DataCollatorWithPadding` (dynamic padding) with K = 2 sequential TRGL (transport on): the prefix
    cache (`trgl_prefix_cache="always"`) trains to the weights of recomputing the prefix (`"never"`), 1e-6."""
    finals = {}
    for cache in ("always", "never"):
        model = wrap(tiny_bert(), K)
        TRGLTrainer(model=model, args=trgl_args(tmp_path / cache, trgl_prefix_cache=cache, optim="sgd",
                                                learning_rate=0.1, trgl_save_stages=False),
                    train_dataset=text_dataset(tokenizer), data_collator=collator).train()  # fmt: skip
        finals[cache] = model.state_dict()
    for name, tensor in finals["never"].items():
        torch.testing.assert_close(finals["always"][name], tensor, msg=lambda m, n=name: f"{n}: {m}", **ORACLE_TOL)


def test_causal_lm_collator_k2(tmp_path, tokenizer):
    """`DataCollatorForLanguageModeling(mlm=False)` with K = 2 sequential: trains every module, and `evaluate()` has
    run_clm's `eval_loss` plus each module's perplexity (`eval_module_{k}_perplexity`)."""
    data = lm_dataset(tokenizer)
    trainer = TRGLTrainer(model=wrap(tiny_gpt2(), K), args=trgl_args(tmp_path), train_dataset=data, eval_dataset=data,
                          data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                          processing_class=tokenizer)  # fmt: skip
    assert trainer.train().global_step == 8
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_module_1_perplexity", "eval_module_2_perplexity"} <= set(metrics)


def test_set_transform_k2_sequential(tmp_path):
    """run_image_classification's `set_transform` data with K = 2 sequential (the prefix is recomputed: the transform
    may be random): every module trains its 4 steps and both stages are written."""
    processor = image_processor()
    data = image_dataset()
    data.set_transform(image_transform(processor))
    trainer = TRGLTrainer(model=wrap(tiny_vit(), K), args=trgl_args(tmp_path, remove_unused_columns=False),
                          train_dataset=data, data_collator=image_collate, processing_class=processor)  # fmt: skip
    assert trainer.train().global_step == 8
    assert (tmp_path / "stage-01" / "config.json").exists() and (tmp_path / "stage-02" / "config.json").exists()
