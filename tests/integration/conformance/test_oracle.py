"""K = 1 without the transport term is end-to-end training: `TRGLTrainer`'s weights, losses, metrics and predictions
equal `Trainer`'s on the uncut model, for the same user code (same seed, same data, fp32 CPU, dropout off).

Tolerance: 1e-6 absolute and relative (`ORACLE_TOL`). Measured on fp32 CPU, one thread: BERT and ResNet (native
`"linear"` head) agree bit for bit (max |diff| 0.0) with SGD, AdamW, Adafactor and Adagrad; ViT agrees to 4e-9 with SGD
(its K = 1 head reorders float operations). Optimizers that normalise each element (Adam, Adafactor) amplify such
rounding differences on parameters whose exact gradient is 0 (attention key biases: softmax is invariant to them) to
lr-sized steps, so the optimizer tests use the ResNet. Dropout is off in every model: with `hidden_dropout_prob=0.1`
the runs differ from the first step (another draw of the masks; see `test_k1_group_by_length`, which shows
TRGLTrainer moving the global RNG before the sampler draws).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (
    DataCollatorForLanguageModeling,
    EarlyStoppingCallback,
    Trainer,
    TrainerCallback,
    default_data_collator,
    get_constant_schedule,
)

from trgl_hf import TRGLTrainer

from .conftest import (
    ORACLE_TOL,
    accuracy,
    assert_same_weights,
    image_collate,
    image_dataset,
    image_processor,
    image_transform,
    k1,
    lm_dataset,
    pixel_dataset,
    plain_args,
    run_pair,
    text_dataset,
    tiny_bert,
    tiny_gpt2,
    tiny_resnet,
    tiny_vit,
    trgl_args,
    wrap,
)

LINEAR = dict(trgl_config=dict(aux_head="linear"))  # a ResNet's native head: pooling + linear


def _close(a, b, tol=ORACLE_TOL):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
                               rtol=tol["rtol"], atol=tol["atol"])  # fmt: skip


# ------------------------------------------------------------------------------------------- data paths


def test_k1_bert_with_padding_collator_equals_trainer(tmp_path, tokenizer, collator):
    """run_glue: `.map`-tokenized text with a `label` column, `DataCollatorWithPadding`, AdamW + linear decay. K = 1
    ends with the plain Trainer's weights, global step and training loss (1e-6; bit-identical in practice)."""
    data = text_dataset(tokenizer)
    initial = tiny_bert().state_dict()
    pair = run_pair(tmp_path, tiny_bert, train_dataset=data, data_collator=collator, processing_class=tokenizer)
    assert_same_weights(pair.stage(), pair.plain.model, moved_from=initial)
    assert pair.trgl_output.global_step == pair.plain_output.global_step == 4
    assert pair.trgl_output.training_loss == pytest.approx(pair.plain_output.training_loss, rel=1e-6)


def test_k1_causal_lm_with_lm_collator_equals_trainer(tmp_path, tokenizer):
    """run_clm / the causal-LM tutorial: tokenized text without labels, `DataCollatorForLanguageModeling(mlm=False)`
    makes them. K = 1 trains to the plain Trainer's weights (1e-6, SGD), and `evaluate()["eval_loss"]` (from which
    run_clm computes `perplexity = math.exp(eval_loss)`) is the model's own next-token loss, averaged over the batches
    as `Trainer` averages them (1e-6). (transformers 5.24's `Trainer` divides each evaluation batch's loss sum by its
    count of unshifted labels, one per row more than the tokens predicted, so its `eval_loss` is lower: a documented
    difference, not copied.) The GPT-2 has untied embeddings: TRGL's native LM heads are untied copies (README,
    Heads), so a tied GPT-2 at K = 1 is not end-to-end training (a documented difference). With AdamW the weights
    agree to 1.5e-6 only (Adam lifts rounding differences)."""
    data = lm_dataset(tokenizer)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    pair = run_pair(tmp_path, lambda: tiny_gpt2(tie_word_embeddings=False), train_dataset=data, eval_dataset=data,
                    data_collator=collator, processing_class=tokenizer,
                    args=dict(optim="sgd", learning_rate=0.1))  # fmt: skip
    assert_same_weights(pair.stage(), pair.plain.model)
    model, total, rows = pair.plain.model.eval(), 0.0, 0
    with torch.no_grad():
        for batch in pair.plain.get_eval_dataloader():
            total += float(model(**batch).loss) * len(batch["input_ids"])
            rows += len(batch["input_ids"])
    assert pair.trgl.evaluate()["eval_loss"] == pytest.approx(total / rows, rel=1e-6)


def test_k1_vit_with_set_transform_equals_trainer(tmp_path):
    """run_image_classification: PIL images transformed on the fly with `set_transform` (image processor),
    `remove_unused_columns=False`, its `collate_fn`. K = 1 equals Trainer's weights (1e-6)."""
    processor = image_processor()
    data = image_dataset()
    data.set_transform(image_transform(processor))
    pair = run_pair(tmp_path, tiny_vit, train_dataset=data, data_collator=image_collate, processing_class=processor,
                    args=dict(remove_unused_columns=False))  # fmt: skip
    assert_same_weights(pair.stage(), pair.plain.model)


def test_k1_resnet_with_with_transform_and_default_collator_equals_trainer(tmp_path):
    """`with_transform` (a transformed view of the dataset) and `default_data_collator` on a ResNet (BatchNorm
    statistics are buffers: compared too). K = 1 with the native pooling + linear head (`aux_head="linear"`) equals
    Trainer's weights and buffers (1e-6)."""
    processor = image_processor()
    data = image_dataset().with_transform(image_transform(processor))
    pair = run_pair(tmp_path, tiny_resnet, train_dataset=data, data_collator=default_data_collator,
                    args=dict(remove_unused_columns=False), trgl_config=dict(aux_head="linear"))  # fmt: skip
    assert_same_weights(pair.stage(), pair.plain.model)


def test_k1_stored_tensors_with_default_collator_equal_trainer(tmp_path):
    """A dataset of stored tensors (`with_format("torch")`) and the default collator, ViT. K = 1 equals Trainer
    (1e-6)."""
    pair = run_pair(tmp_path, tiny_vit, train_dataset=pixel_dataset())
    assert_same_weights(pair.stage(), pair.plain.model)


# ------------------------------------------------------------------------------------------- evaluate / predict


def test_k1_evaluate_equals_trainer_and_keeps_its_keys(tmp_path, tokenizer, collator):
    """`evaluate()` with the tutorial's `compute_metrics` (accuracy): every key Trainer returns is there
    (`eval_loss`, `eval_accuracy`, `eval_runtime`, `eval_samples_per_second`, `eval_steps_per_second`, `epoch`), and
    `eval_loss` / `eval_accuracy` equal Trainer's (1e-6)."""
    data = text_dataset(tokenizer)
    pair = run_pair(tmp_path, tiny_bert, train_dataset=data, eval_dataset=data.select(range(10)),
                    data_collator=collator, compute_metrics=accuracy)  # fmt: skip
    plain, trgl = pair.plain.evaluate(), pair.trgl.evaluate()
    assert set(plain) <= set(trgl), sorted(set(plain) - set(trgl))
    for key in ("eval_loss", "eval_accuracy"):
        assert trgl[key] == pytest.approx(plain[key], rel=1e-6, abs=1e-6), key


def test_k1_predict_fields_equal_trainer(tmp_path, tokenizer, collator):
    """`predict()` (run_glue's do_predict): `predictions` (logits), `label_ids` and `metrics["test_loss"]` equal
    Trainer's (1e-6); every metric key of Trainer's is there; it unpacks as a 3-tuple."""
    data = text_dataset(tokenizer)
    pair = run_pair(tmp_path, tiny_bert, train_dataset=data, data_collator=collator, compute_metrics=accuracy)
    plain, trgl = pair.plain.predict(data.select(range(10))), pair.trgl.predict(data.select(range(10)))
    _close(trgl.predictions, plain.predictions)
    np.testing.assert_array_equal(trgl.label_ids, plain.label_ids)
    assert set(plain.metrics) <= set(trgl.metrics), sorted(set(plain.metrics) - set(trgl.metrics))
    assert trgl.metrics["test_loss"] == pytest.approx(plain.metrics["test_loss"], rel=1e-6)
    assert trgl.metrics["test_accuracy"] == pytest.approx(plain.metrics["test_accuracy"])
    predictions, labels, metrics = trgl
    assert predictions.shape == plain.predictions.shape


def test_k1_predict_without_labels_equals_trainer(tmp_path, tokenizer, collator):
    """run_glue predicts on a test split without labels: `label_ids` is None, predictions equal Trainer's (1e-6)."""
    data = text_dataset(tokenizer)
    unlabeled = data.select(range(6)).remove_columns("label")
    pair = run_pair(tmp_path, tiny_bert, train_dataset=data, data_collator=collator)
    plain, trgl = pair.plain.predict(unlabeled), pair.trgl.predict(unlabeled)
    assert plain.label_ids is None and trgl.label_ids is None
    _close(trgl.predictions, plain.predictions)


class MetricInputs:
    """A `compute_metrics` that records what it receives."""

    def __init__(self):
        self.seen = []

    def __call__(self, eval_prediction, compute_result=None):
        self.seen.append(eval_prediction)
        return accuracy(eval_prediction)


def test_k1_include_for_metrics_inputs(tmp_path, tokenizer, collator):
    """`include_for_metrics=["inputs"]`: `compute_metrics` receives `EvalPrediction.inputs`, the padded input ids,
    equal to what Trainer gives (exact)."""
    data = text_dataset(tokenizer)
    plain_metrics, trgl_metrics = MetricInputs(), MetricInputs()
    pair = run_pair(tmp_path, tiny_bert, train=False, data_collator=collator, eval_dataset=data.select(range(10)),
                    args=dict(include_for_metrics=["inputs"]), plain_kwargs=dict(compute_metrics=plain_metrics),
                    trgl_kwargs=dict(compute_metrics=trgl_metrics))  # fmt: skip
    pair.plain.evaluate()
    pair.trgl.evaluate()
    expected = plain_metrics.seen[-1].inputs
    assert expected is not None
    assert trgl_metrics.seen and all(seen.inputs is not None for seen in trgl_metrics.seen)
    np.testing.assert_array_equal(np.asarray(trgl_metrics.seen[-1].inputs), np.asarray(expected))


class BatchAccuracy:
    """The `batch_eval_metrics=True` form of accuracy: called per batch, `compute_result=True` on the last one."""

    def __init__(self):
        self.correct = self.total = 0

    def __call__(self, eval_prediction, compute_result: bool):
        logits = eval_prediction.predictions
        logits = logits.cpu().numpy() if torch.is_tensor(logits) else np.asarray(logits)
        labels = eval_prediction.label_ids
        labels = labels.cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
        self.correct += int((logits.argmax(-1) == labels).sum())
        self.total += len(labels)
        if compute_result:
            result = {"accuracy": self.correct / self.total}
            self.correct = self.total = 0
            return result
        return {}


def test_k1_batch_eval_metrics(tmp_path, tokenizer, collator):
    """`batch_eval_metrics=True` with a per-batch `compute_metrics(eval_pred, compute_result)`: the trainer builds,
    evaluates, and `eval_accuracy` / `eval_loss` equal Trainer's (1e-6)."""
    data = text_dataset(tokenizer)
    pair = run_pair(tmp_path, tiny_bert, train_dataset=data, eval_dataset=data.select(range(10)),
                    data_collator=collator, args=dict(batch_eval_metrics=True),
                    plain_kwargs=dict(compute_metrics=BatchAccuracy()),
                    trgl_kwargs=dict(compute_metrics=BatchAccuracy()))  # fmt: skip
    plain, trgl = pair.plain.evaluate(), pair.trgl.evaluate()
    for key in ("eval_loss", "eval_accuracy"):
        assert trgl[key] == pytest.approx(plain[key], rel=1e-6, abs=1e-6), key


def concatenating_accuracy(eval_prediction):
    """A `compute_metrics` for `eval_do_concat_batches=False`: predictions and labels arrive as lists of batches."""
    assert isinstance(eval_prediction.predictions, list), type(eval_prediction.predictions)
    logits = np.concatenate([np.asarray(batch) for batch in eval_prediction.predictions])
    labels = np.concatenate([np.asarray(batch) for batch in eval_prediction.label_ids])
    return {"accuracy": float((logits.argmax(-1) == labels).mean()), "batches": len(eval_prediction.predictions)}


def test_k1_eval_do_concat_batches_false(tmp_path, tokenizer, collator):
    """`eval_do_concat_batches=False`: `compute_metrics` receives per-batch lists (uneven last batch: 10 rows in 4s),
    and its results equal Trainer's (exact)."""
    data = text_dataset(tokenizer)
    pair = run_pair(tmp_path, tiny_bert, train_dataset=data, eval_dataset=data.select(range(10)),
                    data_collator=collator, compute_metrics=concatenating_accuracy,
                    args=dict(eval_do_concat_batches=False))  # fmt: skip
    plain, trgl = pair.plain.evaluate(), pair.trgl.evaluate()
    assert plain["eval_batches"] == 3
    assert trgl["eval_batches"] == plain["eval_batches"] and trgl["eval_accuracy"] == plain["eval_accuracy"]


def test_k1_label_names(tmp_path, tokenizer, collator):
    """`label_names=["labels"]` given explicitly (as scripts with custom collators do): `predict().label_ids` and
    `test_loss` equal Trainer's (exact / 1e-6)."""
    data = text_dataset(tokenizer)
    pair = run_pair(tmp_path, tiny_bert, train_dataset=data, data_collator=collator,
                    args=dict(label_names=["labels"]))  # fmt: skip
    plain, trgl = pair.plain.predict(data.select(range(10))), pair.trgl.predict(data.select(range(10)))
    np.testing.assert_array_equal(trgl.label_ids, plain.label_ids)
    assert trgl.metrics["test_loss"] == pytest.approx(plain.metrics["test_loss"], rel=1e-6)


# ------------------------------------------------------------------------------------------- optimisation


@pytest.mark.parametrize("optim", ["adamw_torch", "sgd", "adafactor"])
def test_k1_optim_names(tmp_path, optim):
    """`optim=<name>` (TrainingArguments' optimizer names): K = 1 equals Trainer with the same optimizer (1e-6)."""
    pair = run_pair(
        tmp_path, tiny_resnet, train_dataset=pixel_dataset(), args=dict(optim=optim, learning_rate=0.05), **LINEAR
    )
    assert_same_weights(pair.stage(), pair.plain.model)


class LearningRates(TrainerCallback):
    def __init__(self):
        self.rates = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "learning_rate" in logs:
            self.rates.append(logs["learning_rate"])


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant_with_warmup"])
def test_k1_lr_scheduler_type_and_warmup(tmp_path, schedule):
    """`lr_scheduler_type` with `warmup_steps=2` over 6 steps: the learning rate logged at every step and the final
    weights equal Trainer's (1e-6)."""
    plain_rates, trgl_rates = LearningRates(), LearningRates()
    pair = run_pair(tmp_path, tiny_resnet, train_dataset=pixel_dataset(), **LINEAR,
                    args=dict(lr_scheduler_type=schedule, warmup_steps=2, max_steps=6),
                    plain_kwargs=dict(callbacks=[plain_rates]), trgl_kwargs=dict(callbacks=[trgl_rates]))  # fmt: skip
    assert len(plain_rates.rates) == 6
    _close(trgl_rates.rates, plain_rates.rates)
    assert_same_weights(pair.stage(), pair.plain.model)


def test_k1_optimizers_tuple(tmp_path):
    """`Trainer(optimizers=(optimizer, scheduler))` with the user's own SGD and constant schedule (not the default
    AdamW): at K = 1, built over the TRGL model's parameters, it is the optimizer used, so the weights equal Trainer's
    with the same tuple (1e-6)."""
    plain_model, trgl_model = tiny_resnet(), k1(tiny_resnet(), aux_head="linear")
    finals = []
    for trainer_class, model, arguments, folder in ((Trainer, plain_model, plain_args, "plain"),
                                                    (TRGLTrainer, trgl_model, trgl_args, "trgl")):  # fmt: skip
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        trainer = trainer_class(model=model, args=arguments(tmp_path / folder), train_dataset=pixel_dataset(),
                                optimizers=(optimizer, get_constant_schedule(optimizer)))  # fmt: skip
        trainer.train()
        finals.append(model)
    assert_same_weights(trgl_model.export_stage(1), plain_model)


class SeenOptimizers(TrainerCallback):
    def __init__(self):
        self.optimizers = []

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.optimizers.append(optimizer)


def test_optimizers_tuple_is_used_or_refused_at_k2(tmp_path):
    """`optimizers=(optimizer, scheduler)` with K = 2 sequential phases: the user's optimizer is either the one every
    step uses, or refused with a `ValueError` naming `optimizers` before training — never silently replaced."""
    model = wrap(tiny_vit(), 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = SeenOptimizers()
    try:
        trainer = TRGLTrainer(model=model, args=trgl_args(tmp_path), train_dataset=pixel_dataset(),
                              optimizers=(optimizer, get_constant_schedule(optimizer)), callbacks=[seen])  # fmt: skip
        trainer.train()
    except ValueError as error:
        assert "optimizers" in str(error) and not seen.optimizers
        return
    assert seen.optimizers and all(o is optimizer or getattr(o, "optimizer", None) is optimizer
                                   for o in seen.optimizers)  # fmt: skip


def test_k1_label_smoothing_factor(tmp_path):
    """`label_smoothing_factor=0.3` (run_image_classification / the recipes' flag): K = 1 equals Trainer with the
    same factor (1e-6), and differs from a run without it (the factor acts)."""
    pair = run_pair(tmp_path, tiny_resnet, train_dataset=pixel_dataset(), **LINEAR,
                    args=dict(label_smoothing_factor=0.3, learning_rate=0.05))  # fmt: skip
    assert_same_weights(pair.stage(), pair.plain.model)
    unsmoothed = k1(tiny_resnet(), aux_head="linear")
    TRGLTrainer(model=unsmoothed, args=trgl_args(tmp_path / "none", learning_rate=0.05),
                train_dataset=pixel_dataset()).train()  # fmt: skip
    differs = any(not torch.equal(a, b) for a, b in zip(pair.stage().state_dict().values(),
                                                        unsmoothed.export_stage(1).state_dict().values()))  # fmt: skip
    assert differs, "label_smoothing_factor=0.3 left the weights bit-identical to a run without it"


def test_k1_gradient_accumulation(tmp_path):
    """`gradient_accumulation_steps=2` with batch 2, SGD: K = 1 equals Trainer with the same settings (1e-6), global
    step counts optimizer steps as Trainer does. (With AdamW the accumulated gradients, summed in another order, differ
    by rounding and Adam's normalisation lifts that to 1e-5 on a few weights: SGD keeps the comparison exact.)"""
    pair = run_pair(tmp_path, tiny_resnet, train_dataset=pixel_dataset(), **LINEAR,
                    args=dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, optim="sgd",
                              learning_rate=0.05))  # fmt: skip
    assert_same_weights(pair.stage(), pair.plain.model)
    assert pair.trgl_output.global_step == pair.plain_output.global_step


def test_k1_gradient_checkpointing(tmp_path, tokenizer, collator):
    """`gradient_checkpointing=True` (run_clm's flag) on a BERT: K = 1 trains and equals Trainer with gradient
    checkpointing (1e-6)."""
    pair = run_pair(tmp_path, tiny_bert, train_dataset=text_dataset(tokenizer), data_collator=collator,
                    args=dict(gradient_checkpointing=True))  # fmt: skip
    assert_same_weights(pair.stage(), pair.plain.model)


def test_gradient_checkpointing_k2_equals_without(tmp_path, tokenizer, collator):
    """`gradient_checkpointing=True` with K = 2 sequential TRGL: the same weights as the same run without it (1e-6):
    checkpointing changes memory, not gradients."""
    finals = []
    for checkpointing in (False, True):
        model = wrap(tiny_bert(), 2)
        TRGLTrainer(model=model, args=trgl_args(tmp_path / str(checkpointing), gradient_checkpointing=checkpointing),
                    train_dataset=text_dataset(tokenizer), data_collator=collator).train()  # fmt: skip
        finals.append(model.state_dict())
    for name, tensor in finals[0].items():
        torch.testing.assert_close(finals[1][name], tensor, msg=name, **ORACLE_TOL)


def _cpu_bf16_autocast() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.skipif(not _cpu_bf16_autocast(), reason="this torch build has no CPU bfloat16 autocast")
def test_k1_bf16_on_cpu(tmp_path):
    """`bf16=True` on CPU (autocast bfloat16): K = 1 trains and ends with Trainer's bf16 weights (1e-6: the same
    autocast ops on the same tensors)."""
    pair = run_pair(tmp_path, tiny_resnet, train_dataset=pixel_dataset(), args=dict(bf16=True), **LINEAR)
    assert_same_weights(pair.stage(), pair.plain.model)


def test_k1_auto_find_batch_size(tmp_path):
    """`auto_find_batch_size=True` (no out-of-memory on CPU: the batch size stays): K = 1 equals Trainer (1e-6)."""
    pair = run_pair(tmp_path, tiny_resnet, train_dataset=pixel_dataset(), args=dict(auto_find_batch_size=True),
                    **LINEAR)  # fmt: skip
    assert_same_weights(pair.stage(), pair.plain.model)


def test_k1_group_by_length(tmp_path, tokenizer, collator):
    """`group_by_length` (transformers 5: `train_sampling_strategy="group_by_length"`, LengthGroupedSampler over
    `input_ids` lengths): K = 1 sees the same batches and equals Trainer (1e-6)."""
    pair = run_pair(tmp_path, tiny_bert, train_dataset=text_dataset(tokenizer), data_collator=collator,
                    args=dict(train_sampling_strategy="group_by_length"))  # fmt: skip
    assert_same_weights(pair.stage(), pair.plain.model)


def test_group_by_length_k2_sequential(tmp_path, tokenizer, collator):
    """`train_sampling_strategy="group_by_length"` with K = 2 sequential (prefix cache "auto"): trains every module
    for its steps (global step 2 x 4)."""
    model = wrap(tiny_bert(), 2)
    output = TRGLTrainer(model=model, args=trgl_args(tmp_path, train_sampling_strategy="group_by_length"),
                         train_dataset=text_dataset(tokenizer), data_collator=collator).train()  # fmt: skip
    assert output.global_step == 8


# ------------------------------------------------------------------------------------------- run length and seeds


def test_k1_seed_equals_trainer_and_reproduces(tmp_path):
    """`seed=3` sets the initialisation-independent randomness (data order): K = 1 equals Trainer with seed 3
    (1e-6); a second K = 2 run with the same seed is bit-identical (exact)."""
    pair = run_pair(tmp_path, tiny_resnet, train_dataset=pixel_dataset(), args=dict(seed=3), **LINEAR)
    assert_same_weights(pair.stage(), pair.plain.model)
    finals = []
    for run, seed in (("a", 3), ("b", 3)):
        model = wrap(tiny_resnet(), 2, aux_head="linear")
        TRGLTrainer(model=model, args=trgl_args(tmp_path / run, seed=seed, max_steps=2, learning_rate=0.05),
                    train_dataset=pixel_dataset()).train()  # fmt: skip
        finals.append(model.state_dict())
    for name, tensor in finals[0].items():
        assert torch.equal(finals[1][name], tensor), name


def test_k1_num_train_epochs_equals_trainer(tmp_path):
    """`num_train_epochs=2` (no `max_steps`): K = 1 runs Trainer's number of steps (2 epochs x 4 batches) and ends
    with its weights (1e-6)."""
    pair = run_pair(tmp_path, tiny_resnet, train_dataset=pixel_dataset(), args=dict(max_steps=-1, num_train_epochs=2),
                    **LINEAR)  # fmt: skip
    assert pair.plain_output.global_step == pair.trgl_output.global_step == 8
    assert_same_weights(pair.stage(), pair.plain.model)


def test_max_steps_and_epochs_per_module(tmp_path):
    """`max_steps` / `num_train_epochs` with K = 2: parallel mode runs Trainer's count for the whole run (2 epochs x 2
    batches = 4 steps); sequential mode counts `max_steps=3` and epochs per module (documented): 2 x 3 and 2 x 4."""
    for mode, budget, expected in (("parallel", dict(max_steps=-1, num_train_epochs=2), 4),
                                   ("sequential", dict(max_steps=3), 6),
                                   ("sequential", dict(max_steps=-1, num_train_epochs=2), 8)):  # fmt: skip
        model = wrap(tiny_resnet(), 2, aux_head="linear")
        output = TRGLTrainer(model=model, args=trgl_args(tmp_path / f"{mode}{expected}", trgl_mode=mode, **budget),
                             train_dataset=pixel_dataset(rows=8)).train()  # fmt: skip
        assert output.global_step == expected, (mode, budget)


# ------------------------------------------------------------------------------------------- best model


def test_k1_early_stopping_callback(tmp_path):
    """`EarlyStoppingCallback(early_stopping_patience=1)` with `load_best_model_at_end`, evaluation and saving every
    step, and a threshold no step can meet: Trainer stops after 2 steps; K = 1 stops at the same step, with the same
    best metric and the same (best, reloaded) weights (1e-6)."""
    data = pixel_dataset()
    pair = run_pair(tmp_path, tiny_resnet, train_dataset=data, eval_dataset=data.select(range(8)), **LINEAR,
                    callbacks=[EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=10.0)],
                    args=dict(eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1,
                              load_best_model_at_end=True, metric_for_best_model="loss", max_steps=6))  # fmt: skip
    assert pair.plain_output.global_step == 2
    assert pair.trgl_output.global_step == pair.plain_output.global_step
    assert pair.trgl.state.best_metric == pytest.approx(pair.plain.state.best_metric, rel=1e-6)
    assert_same_weights(pair.stage(), pair.plain.model)


def test_k1_load_best_model_at_end(tmp_path):
    """`load_best_model_at_end=True` with `metric_for_best_model="accuracy"`, evaluation and saving every 2 steps
    (6 steps, a high learning rate): K = 1 ends with Trainer's best metric and weights (1e-6), and
    `state.best_model_checkpoint` is set (not None) as Trainer's is."""
    data = pixel_dataset()
    pair = run_pair(tmp_path, tiny_resnet, train_dataset=data, eval_dataset=data.select(range(8)), **LINEAR,
                    compute_metrics=accuracy,
                    args=dict(eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
                              load_best_model_at_end=True, metric_for_best_model="accuracy", max_steps=6,
                              learning_rate=0.05))  # fmt: skip
    assert pair.plain.state.best_model_checkpoint is not None
    assert pair.trgl.state.best_model_checkpoint is not None
    assert pair.trgl.state.best_metric == pytest.approx(pair.plain.state.best_metric)
    assert_same_weights(pair.stage(), pair.plain.model)
