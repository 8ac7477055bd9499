"""Stages keep the base model's dtype: a bfloat16 base gives bfloat16 stages (parameters, saved `config.dtype`, and
the model `from_pretrained` loads), never float32 copies twice the size."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    BertConfig,
    GPT2Config,
)

from trgl_hf import TRGLConfig, TRGLModel

from ...conftest import tiny_hf_resnet

BERT = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                  num_labels=3)  # fmt: skip
GPT2 = GPT2Config(vocab_size=40, n_embd=32, n_layer=2, n_head=2, n_positions=16)


def _bf16_base(kind: str):
    """A base built from a config in bfloat16, the two ways users do it."""
    torch.manual_seed(0)
    if kind == "bert":
        return AutoModelForSequenceClassification.from_config(BERT, dtype=torch.bfloat16)
    if kind == "gpt2":
        return AutoModelForCausalLM.from_config(GPT2, dtype=torch.bfloat16)
    return tiny_hf_resnet(num_labels=3).to(torch.bfloat16)  # cast after building: config.dtype is unset


def _inputs(kind: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    if kind == "resnet":
        return {"pixel_values": torch.randn(2, 3, 32, 32, dtype=torch.bfloat16)}
    return {"input_ids": torch.randint(3, 40, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long)}


CASES = [("bert", "native", AutoModelForSequenceClassification, {}),
         ("bert", "mean", AutoModelForSequenceClassification, {"trust_remote_code": True}),
         ("gpt2", "native", AutoModelForCausalLM, {}),
         ("resnet", "linear", AutoModelForImageClassification, {}),
         ("resnet", "conv", AutoModelForImageClassification, {"trust_remote_code": True})]  # fmt: skip


@pytest.mark.parametrize(("kind", "head", "auto", "load_kwargs"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_bfloat16_base_gives_bfloat16_stages(tmp_path, kind, head, auto, load_kwargs):
    model = TRGLModel.from_base(_bf16_base(kind), TRGLConfig(num_modules=2, aux_head=head, image_size=32)).eval()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}  # heads too
    inputs = _inputs(kind)
    with torch.no_grad():
        logits = next(model.iter_modules(**inputs)).logits
    stage = model.export_stage(1)
    assert {p.dtype for p in stage.parameters()} == {torch.bfloat16}
    stage.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["dtype"] == "bfloat16"
    loaded = auto.from_pretrained(tmp_path, dtype="auto", **load_kwargs).eval()
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, logits, rtol=0, atol=0)


def test_a_float32_base_still_gives_float32_stages():
    model = TRGLModel.from_base(tiny_hf_resnet(num_labels=3), TRGLConfig(num_modules=2, image_size=32))
    stage = model.export_stage(2)
    assert {p.dtype for p in stage.parameters()} == {torch.float32}
    assert stage.config.dtype == torch.float32
