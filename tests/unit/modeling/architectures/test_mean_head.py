"""Mean-pooling heads (`aux_head="mean"`): what they read, exact export as a remote-code stage, and refusals."""

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    ConvNextConfig,
    ConvNextForImageClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
    ViTConfig,
    ViTForImageClassification,
)

from trgl_hf import TRGLConfig, TRGLModel, TRGLStageForSequenceClassification
from trgl_hf.models.aux_heads import MeanPoolHead

SMALL = dict(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32)


def encoder(family: str = "bert", problem_type: str = "single_label_classification", num_labels: int = 3):
    torch.manual_seed(0)
    settings = dict(vocab_size=40, num_labels=num_labels, problem_type=problem_type, **SMALL)
    if family == "roberta":
        return RobertaForSequenceClassification(RobertaConfig(pad_token_id=1, **settings))
    return BertForSequenceClassification(BertConfig(**settings))


def padded_batch():
    torch.manual_seed(1)
    input_ids = torch.randint(2, 40, (3, 7))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 4:] = 0
    attention_mask[2, 2:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def test_every_module_gets_a_mean_pooling_head_that_trains():
    model = TRGLModel.from_base(encoder(), TRGLConfig(num_modules=2, aux_head="mean", tau=1.0))
    assert all(isinstance(head, MeanPoolHead) for head in model.heads)
    output = model(**padded_batch(), labels=torch.tensor([0, 1, 2]))
    output.module_losses.sum().backward()
    for head in model.heads:
        assert head.classifier.weight.grad is not None and head.classifier.weight.grad.abs().sum() > 0


def test_padding_does_not_change_what_the_head_reads():
    model = TRGLModel.from_base(encoder(), TRGLConfig(num_modules=2, aux_head="mean")).eval()
    batch = padded_batch()
    short = {name: value[2:3, :2] for name, value in batch.items()}
    with torch.no_grad():
        padded = model(**batch).module_logits[2]
        alone = model(**short).module_logits[0]
        garbage = dict(batch, input_ids=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 3))
        other_padding = model(**garbage).module_logits[2]
    torch.testing.assert_close(padded, alone)
    torch.testing.assert_close(padded, other_padding)


@pytest.mark.parametrize(
    ("family", "problem_type", "num_labels"),
    [
        ("bert", "single_label_classification", 3),
        ("roberta", "single_label_classification", 3),
        ("bert", "multi_label_classification", 3),
        ("bert", "regression", 1),
    ],
)
def test_every_stage_exports_exactly_and_reloads_with_the_auto_class(tmp_path, family, problem_type, num_labels):
    model = TRGLModel.from_base(encoder(family, problem_type, num_labels), TRGLConfig(num_modules=2, aux_head="mean"))
    labels = {"regression": torch.randn(3), "multi_label_classification": torch.ones(3, 3)}.get(
        problem_type, torch.tensor([0, 1, 2])
    )
    model.train()
    model(**padded_batch(), labels=labels).module_losses.sum().backward()
    with torch.no_grad():
        for parameter in model.parameters():  # move every weight away from its initial value
            parameter.add_(0.01 * torch.randn_like(parameter))
    model.eval()
    batch = padded_batch()
    with torch.no_grad():
        expected = model(**batch).module_logits
    for stage in (1, 2):
        model.export_stage(stage).save_pretrained(tmp_path / f"stage-{stage}")
        loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / f"stage-{stage}").eval()
        assert isinstance(loaded, TRGLStageForSequenceClassification)
        assert loaded.config.backbone_config["num_hidden_layers"] == 2 * stage
        with torch.no_grad():
            output = loaded(**batch, labels=labels)
        torch.testing.assert_close(output.logits, expected[:, stage - 1])
        assert torch.isfinite(output.loss)


def test_whole_model_round_trip_keeps_mean_heads(tmp_path):
    model = TRGLModel.from_base(encoder(), TRGLConfig(num_modules=2, aux_head="mean")).eval()
    model.save_pretrained(tmp_path / "model")
    loaded = TRGLModel.from_pretrained(tmp_path / "model").eval()
    assert loaded.config.aux_head == "mean" and isinstance(loaded.heads[0], MeanPoolHead)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**padded_batch()).module_logits, model(**padded_batch()).module_logits)


def test_a_model_with_a_final_norm_is_refused():
    torch.manual_seed(0)
    gpt2 = GPT2ForSequenceClassification(
        GPT2Config(vocab_size=40, n_embd=16, n_layer=4, n_head=2, num_labels=2, pad_token_id=0)
    )
    with pytest.raises(ValueError, match=r"ln_f.*aux_head='native'"):
        TRGLModel.from_base(gpt2, TRGLConfig(num_modules=2, aux_head="mean"))


def test_a_model_that_is_not_a_text_classifier_is_refused():
    torch.manual_seed(0)
    vit = ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, num_labels=3, **SMALL))
    with pytest.raises(ValueError, match=r"text sequence classifiers.*aux_head='native'"):
        TRGLModel.from_base(vit, TRGLConfig(num_modules=2, aux_head="mean"))
    convnext = ConvNextForImageClassification(
        ConvNextConfig(hidden_sizes=[8, 16], depths=[2, 2], num_stages=2, image_size=32, num_labels=3)
    )
    with pytest.raises(ValueError, match=r"aux_head='mean'.*use one of \('native',\)"):
        TRGLModel.from_base(convnext, TRGLConfig(num_modules=2, aux_head="mean"))


def test_the_stage_loss_is_the_trgl_loss_for_column_regression_labels():
    model = TRGLModel.from_base(encoder(problem_type=None, num_labels=1), TRGLConfig(num_modules=2, aux_head="mean"))
    model.eval()
    labels = torch.randn(3, 1)  # one-element label rows are accepted by the trainer
    with torch.no_grad():
        expected = model(**padded_batch(), labels=labels).module_losses[1]
        stage_loss = model.export_stage(2)(**padded_batch(), labels=labels).loss
    torch.testing.assert_close(stage_loss, expected)


def test_the_head_follows_the_backbone_dtype():
    model = TRGLModel.from_base(encoder().to(torch.bfloat16), TRGLConfig(num_modules=2, aux_head="mean"))
    assert all(p.dtype == torch.bfloat16 for p in model.heads.parameters())
    assert model(**padded_batch()).module_logits.dtype == torch.bfloat16
