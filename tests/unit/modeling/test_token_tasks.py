"""Token classification and masked LM: transformers' own losses (-100 ignored), the transport term on real tokens,
entity precision / recall / F1 against spans computed by hand, and the per-module metrics of padded batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf
from transformers import EvalPrediction

from trgl_hf import TRGLConfig, TRGLModel, get_task
from trgl_hf.modeling.entities import entity_scores, entity_spans, is_iob2
from trgl_hf.modeling.losses import chunked_causal_lm_loss
from trgl_hf.modeling.tasks import stage_loader
from trgl_hf.training.data import check_labels
from trgl_hf.training.metrics import PerModuleMetrics

SMALL = dict(vocab_size=40, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32)
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
ID2LABEL = dict(enumerate(TAGS))
LABELS = dict(id2label=ID2LABEL, label2id={tag: i for i, tag in enumerate(TAGS)})


def padded_inputs():
    torch.manual_seed(1)
    input_ids = torch.randint(5, 40, (2, 7))
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, 5:], attention_mask[1, 5:] = 0, 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def token_classifier(name: str = "Bert"):
    torch.manual_seed(0)
    if name == "Llama":
        config = tf.LlamaConfig(**SMALL, num_key_value_heads=1, pad_token_id=0, **LABELS)
    else:
        config = tf.BertConfig(**SMALL, **LABELS)
    return getattr(tf, f"{name}ForTokenClassification")(config).eval()


# ---------------------------------------------------------------------------------------------------- entities


def test_entity_spans_follow_seqeval_default_mode():
    assert entity_spans(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 2), ("LOC", 3, 4)]
    assert entity_spans(["O", "I-PER", "I-PER"]) == [("PER", 1, 3)]  # an I- without B- starts an entity
    assert entity_spans(["B-PER", "I-LOC"]) == [("PER", 0, 1), ("LOC", 1, 2)]  # a type change ends it
    assert entity_spans(["B-PER", "B-PER"]) == [("PER", 0, 1), ("PER", 1, 2)]
    assert entity_spans(["O", "O"]) == []
    assert is_iob2(TAGS) and not is_iob2(["LABEL_0", "LABEL_1"]) and not is_iob2(["O", "I-X"])


def test_entity_scores_against_hand_computed_spans():
    truth = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "I-LOC", "O"]]
    guess = [["B-PER", "I-PER", "O", "O"], ["B-LOC", "O", "B-PER"]]
    # true: PER(0,0-2) LOC(0,3-4) LOC(1,0-2); predicted: PER(0,0-2) LOC(1,0-1) PER(1,2-3): one correct
    scores = entity_scores(truth, guess)
    assert scores["precision"] == pytest.approx(1 / 3) and scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(1 / 3)
    assert entity_scores([["O"]], [["O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}  # seqeval's 0


def test_token_metrics_skip_the_ignored_positions():
    task = get_task("token_classification").for_labels(ID2LABEL)
    assert task.selection_metric == "f1" and task.label_names == tuple(TAGS)
    # predicted classes per position; -100 marks special tokens / padding / later word pieces
    predicted = np.array([[0, 1, 2, 0, 3, 4], [3, 3, 4, 1, 0, 0]])
    labels = np.array([[-100, 1, 2, 0, 3, -100], [-100, 3, 4, 0, -100, -100]])
    logits = np.eye(5)[predicted] * 5.0
    metrics = task.default_metrics(EvalPrediction(predictions=logits, label_ids=labels))
    # aligned: [B-PER I-PER O B-LOC] vs same; [B-LOC I-LOC O] vs [B-LOC I-LOC B-PER]: 7 tokens, 6 right
    assert metrics["accuracy"] == pytest.approx(6 / 7)
    assert metrics["precision"] == pytest.approx(3 / 4) and metrics["recall"] == pytest.approx(1.0)
    assert metrics["f1"] == pytest.approx(2 * 0.75 / 1.75)
    plain = get_task("token_classification").for_labels({0: "LABEL_0", 1: "LABEL_1"})
    assert plain.selection_metric == "accuracy"
    assert set(plain.default_metrics(EvalPrediction(predictions=logits[..., :2], label_ids=labels % 2))) == {
        "accuracy"
    }


def test_per_module_metrics_of_token_batches_of_different_lengths():
    """Predictions `(examples, length, modules, labels)`, as the trainer gathers them: modules on axis 2, padding
    (-100 labels) ignored by the loss and the metrics of every module."""
    task = get_task("token_classification").for_labels(ID2LABEL)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 6, 2, 5))
    labels = rng.integers(0, 5, size=(3, 6))
    labels[1, 4:] = -100
    metrics = PerModuleMetrics(task=task)(EvalPrediction(predictions=logits, label_ids=labels))
    for module in (1, 2):
        expected = task.loss(torch.tensor(logits[:, :, module - 1]), torch.tensor(labels))
        assert metrics[f"module_{module}_loss"] == pytest.approx(float(expected), rel=1e-6)
        head = task.default_metrics(EvalPrediction(predictions=logits[:, :, module - 1], label_ids=labels))
        assert metrics[f"module_{module}_f1"] == pytest.approx(head["f1"])
    assert metrics["best_module"] in (1, 2) and "best_module_f1" in metrics

    streamed = PerModuleMetrics(task=task)  # batch_eval_metrics: batches of different lengths, padded at the end
    streamed(EvalPrediction(predictions=logits[:2], label_ids=labels[:2]), compute_result=False)
    last = streamed(EvalPrediction(predictions=logits[2:, :4], label_ids=labels[2:, :4]), compute_result=True)
    whole_labels = labels.copy()
    whole_labels[2, 4:] = -100
    whole = PerModuleMetrics(task=task)(EvalPrediction(predictions=logits, label_ids=whole_labels))
    assert last["module_2_f1"] == pytest.approx(whole["module_2_f1"])
    assert last["module_2_accuracy"] == pytest.approx(whole["module_2_accuracy"])


# ---------------------------------------------------------------------------------------------------- losses


@pytest.mark.parametrize("name", ["Bert", "Llama"])
def test_token_classification_loss_is_transformers_own(name):
    base = token_classifier(name)
    inputs = padded_inputs()
    labels = torch.randint(0, 5, (2, 7)).masked_fill(inputs["attention_mask"] == 0, -100)
    labels[0, 0] = -100  # a special token
    with torch.no_grad():
        expected = base(**inputs, labels=labels).loss
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=1, use_transport=False)).eval()
    assert model.config.task == "token_classification" and model.task.selection_metric == "f1"
    with torch.no_grad():
        output = model(**inputs, labels=labels)
    torch.testing.assert_close(output.loss, expected)
    assert output.module_logits.shape == (2, 1, 7, 5)
    assert stage_loader(f"{name}ForTokenClassification") == ("AutoModelForTokenClassification", "token-classification")


def test_masked_lm_loss_is_transformers_own_and_its_chunks_are_unshifted():
    torch.manual_seed(0)
    base = tf.BertForMaskedLM(tf.BertConfig(**SMALL)).eval()
    inputs = padded_inputs()
    labels = torch.full((2, 7), -100)
    labels[0, 2], labels[1, 1], labels[1, 3] = 7, 9, 11  # the masked positions only
    with torch.no_grad():
        expected = base(**inputs, labels=labels).loss
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=1, use_transport=False)).eval()
    assert model.config.task == "masked_lm" and model.task.is_language_model and not model.task.shifts_labels
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs, labels=labels).loss, expected)
    assert int(model.task.count_targets(labels)) == 3
    assert stage_loader("BertForMaskedLM") == ("AutoModelForMaskedLM", "fill-mask")

    hidden = torch.randn(2, 7, 16, requires_grad=True)
    projection = torch.nn.Linear(16, 40)
    whole = torch.nn.functional.cross_entropy(projection(hidden).reshape(-1, 40), labels.reshape(-1))
    for chunk in (1, 4, 100):
        chunked = chunked_causal_lm_loss(hidden, labels, projection, chunk, shift=False)
        torch.testing.assert_close(chunked, whole)


def test_masked_lm_training_step_matches_its_evaluation_loss():
    """A training step's chunked (unshifted) loss is the head's loss on the whole logits."""
    torch.manual_seed(0)
    base = tf.BertForMaskedLM(tf.BertConfig(**SMALL, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    inputs = padded_inputs()
    labels = inputs["input_ids"].masked_fill(torch.rand(2, 7) > 0.4, -100)
    labels[0, 1] = 5
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=2, lm_loss_chunk_tokens=3))
    training = model.train()(**inputs, labels=labels).module_losses
    with torch.no_grad():
        evaluation = model.eval()(**inputs, labels=labels).module_losses
    torch.testing.assert_close(training.detach(), evaluation)


def test_padding_changes_neither_the_transport_term_nor_the_loss_of_a_token_classifier():
    base = token_classifier()
    inputs = padded_inputs()
    labels = torch.randint(0, 5, (2, 7)).masked_fill(inputs["attention_mask"] == 0, -100)
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=2, tau=1.0)).eval()
    other = dict(inputs, input_ids=inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, 33))
    with torch.no_grad():
        first, second = model(**inputs, labels=labels), model(**other, labels=labels)
    torch.testing.assert_close(first.transport, second.transport)
    torch.testing.assert_close(first.module_losses, second.module_losses)


# ---------------------------------------------------------------------------------------------------- labels, refusals


def test_per_token_labels_are_checked():
    from datasets import Dataset

    task = get_task("token_classification")
    good = Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5]], "labels": [[-100, 1, 4], [0, -100]]})
    check_labels(good, 5, task=task)
    with pytest.raises(ValueError, match="num_labels=5"):
        check_labels(Dataset.from_dict({"labels": [[0, 7]]}), 5, task=task)
    with pytest.raises(ValueError, match="token classifier"):
        check_labels(Dataset.from_dict({"labels": [[0.5, 1.0]]}), 5, task=task)
    with pytest.raises(ValueError, match="every label is -100"):
        check_labels(Dataset.from_dict({"labels": [[-100, -100]]}), 5, task=task)


def test_families_without_the_task_classes_are_refused_clearly():
    class CustomGemmaForTokenClassification(tf.GemmaForTokenClassification):  # a class the registry does not list
        pass

    config = tf.GemmaConfig(**SMALL, num_key_value_heads=1, head_dim=8, pad_token_id=0)
    with pytest.raises(ValueError, match="token classification is not registered for this family.*BERT"):
        TRGLModel.from_base(CustomGemmaForTokenClassification(config), TRGLConfig(num_modules=2))
    gpt2 = tf.GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=2)
    with pytest.raises(ValueError, match="GPT2ForQuestionAnswering.*question answering"):
        TRGLModel.from_base(tf.GPT2ForQuestionAnswering(gpt2), TRGLConfig(num_modules=2))
