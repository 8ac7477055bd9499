"""`TRGLModel.export_stage(stage, share_weights=True)`: the stage is built on the meta device and holds the TRGL
model's own tensors (no second copy of the weights, no random initialisation), with the same logits, state and saved
files as the default (copying) export."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    LlamaForCausalLM,
)

from trgl_hf import TRGLConfig, TRGLModel
from trgl_hf.modeling.architectures import base as adapter_base

from ...conftest import tiny_hf_resnet
from ..modeling.architectures.test_registry import AUTO, SUPPORTED, build, inputs_for, perturb


def _trgl(base, **settings) -> TRGLModel:
    size = getattr(base.config, "image_size", None) or 32
    size = size[0] if isinstance(size, (list, tuple)) else size  # PVT-v2 stores (height, width)
    return TRGLModel.from_base(base, TRGLConfig(num_modules=2, image_size=size, **settings)).eval()


def _tensors(model: torch.nn.Module) -> dict[int, str]:
    """data_ptr -> name of every parameter and buffer of `model`."""
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return {tensor.data_ptr(): name for name, tensor in named}


def _check_shared_export(model: TRGLModel, stage: int, inputs: dict[str, torch.Tensor]) -> torch.nn.Module:
    """`export_stage(stage, share_weights=True)` equals the copying export and holds `model`'s tensors."""
    copied = model.export_stage(stage)
    shared = model.export_stage(stage, share_weights=True)
    assert type(shared) is type(copied)
    assert not shared.training and not any(p.requires_grad for p in shared.parameters())
    assert {t.device.type for t in shared.state_dict().values()} == {"cpu"}
    with torch.no_grad():
        assert torch.equal(shared(**inputs).logits, copied(**inputs).logits)
    copied_state, shared_state = copied.state_dict(), shared.state_dict()
    assert shared_state.keys() == copied_state.keys()
    for key, value in shared_state.items():
        assert value.dtype == copied_state[key].dtype and torch.equal(value, copied_state[key]), key
    copied_buffers = dict(copied.named_buffers())  # non-persistent ones (rotary inv_freq, position ids) included
    assert dict(shared.named_buffers()).keys() == copied_buffers.keys()
    for name, buffer in shared.named_buffers():
        assert buffer.dtype == copied_buffers[name].dtype and torch.equal(buffer, copied_buffers[name]), name
    assert shared.config.to_dict() == copied.config.to_dict()
    owned = _tensors(model)
    for key, tensor in shared_state.items():  # parameters and persistent buffers: the model's own storage
        assert tensor.data_ptr() in owned, f"{key} is a copy"
    assert not any(p.data_ptr() in owned for p in copied.parameters())  # the default export stays a copy
    return shared


@pytest.mark.parametrize("class_name", SUPPORTED)
def test_every_family_exports_a_shared_stage_equal_to_the_copy(class_name, caplog):
    base = build(class_name)
    perturb(base)
    inputs, _ = inputs_for(base)
    model = _trgl(base)
    with caplog.at_level(logging.WARNING, logger=adapter_base.__name__):
        for stage in (1, 2):
            _check_shared_export(model, stage, inputs)
    assert not caplog.records  # no family falls back to copying


HEADS = [
    ("LlamaForCausalLM", "native", False),
    ("LlamaForCausalLM", "tied", False),
    ("LlamaForCausalLM", "tied", True),  # the base ties its LM head to the input embedding
    ("GPT2LMHeadModel", "tied", True),
    ("BertForSequenceClassification", "mean", False),
    ("ResNetForImageClassification", "linear", False),
    ("ResNetForImageClassification", "conv", False),
    ("CifarResNetForImageClassification", "conv", False),
]


def _base(class_name: str, tie: bool):
    base = build(class_name)
    if tie and class_name == "LlamaForCausalLM":
        config = base.config
        config.tie_word_embeddings = True
        torch.manual_seed(0)
        base = LlamaForCausalLM(config)
    perturb(base)
    return base


@pytest.mark.parametrize(("class_name", "head", "tie"), HEADS, ids=[f"{c}-{h}{'-tied' * t}" for c, h, t in HEADS])
def test_shared_stages_round_trip_through_save_pretrained(class_name, head, tie, tmp_path):
    base = _base(class_name, tie)
    inputs, _ = inputs_for(base)
    model = _trgl(base, aux_head=head)
    auto = next(auto for suffix, auto in AUTO.items() if class_name.endswith(suffix))
    remote = head in ("mean", "conv")
    for stage in (1, 2):
        shared = _check_shared_export(model, stage, inputs)
        if tie and head == "tied":  # a tied base's stage is tied like the base: one matrix, still the model's
            assert shared.get_output_embeddings().weight is shared.get_input_embeddings().weight
            assert shared.get_input_embeddings().weight.data_ptr() == base.get_input_embeddings().weight.data_ptr()
        folder = tmp_path / str(stage)
        shared.save_pretrained(folder)
        loaded = auto.from_pretrained(folder, trust_remote_code=remote).eval()
        assert loaded.state_dict().keys() == shared.state_dict().keys()
        for key, value in loaded.state_dict().items():
            assert torch.equal(value, shared.state_dict()[key]), key
        with torch.no_grad():  # exact weights; the loaded model may pick another attention kernel (sdpa)
            torch.testing.assert_close(loaded(**inputs).logits, shared(**inputs).logits, rtol=1e-5, atol=1e-5)


def test_a_bfloat16_base_gives_a_shared_bfloat16_stage(tmp_path):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(build("LlamaForCausalLM").config, dtype=torch.bfloat16)
    inputs, _ = inputs_for(base)
    model = _trgl(base)
    shared = _check_shared_export(model, 2, inputs)
    assert {p.dtype for p in shared.parameters()} == {torch.bfloat16}
    assert shared.model.rotary_emb.inv_freq.dtype == torch.float32  # as the copying export builds it
    shared.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"


def test_a_tensor_of_another_dtype_is_converted_like_the_copying_export():
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(build("LlamaForCausalLM").config, dtype=torch.bfloat16)
    inputs, _ = inputs_for(base)
    model = _trgl(base)
    model.backbone.layers[0].input_layernorm.float()  # one float32 tensor in a bfloat16 model
    shared, copied = model.export_stage(2, share_weights=True), model.export_stage(2)
    assert {p.dtype for p in shared.parameters()} == {torch.bfloat16}
    converted = shared.model.layers[0].input_layernorm.weight
    assert converted.data_ptr() != model.backbone.layers[0].input_layernorm.weight.data_ptr()
    assert shared.model.layers[1].input_layernorm.weight.data_ptr() in _tensors(model)
    for key, value in copied.state_dict().items():
        assert torch.equal(shared.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(shared(**inputs).logits, copied(**inputs).logits)


def test_a_stage_left_with_a_meta_tensor_falls_back_to_copying(monkeypatch, caplog):
    base = build("LlamaForCausalLM")
    inputs, _ = inputs_for(base)
    model = _trgl(base)
    monkeypatch.setattr(adapter_base, "_source_tensor", lambda sources, path, name: None)  # no rotary buffers found
    with caplog.at_level(logging.WARNING, logger=adapter_base.__name__):
        exported = model.export_stage(2, share_weights=True)
    assert "Llama" in caplog.text and "inv_freq" in caplog.text and "copying" in caplog.text
    assert not any(t.is_meta for t in [*exported.parameters(), *exported.buffers()])
    assert not any(p.data_ptr() in _tensors(model) for p in exported.parameters())
    with torch.no_grad():
        assert torch.equal(exported(**inputs).logits, model.export_stage(2)(**inputs).logits)


def test_a_lora_base_exports_merged_weights_with_share_weights():
    peft = pytest.importorskip("peft", reason="peft is an optional extra (installed with `.[dev]`)")
    base = build("BertForSequenceClassification")
    lora = peft.get_peft_model(base, peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    inputs, _ = inputs_for(base)
    model = _trgl(lora)
    shared, copied = model.export_stage(2, share_weights=True), model.export_stage(2)
    assert not any("lora" in name for name in shared.state_dict())
    with torch.no_grad():
        assert torch.equal(shared(**inputs).logits, copied(**inputs).logits)


def test_resnet_stage_buffers_are_the_models(tmp_path):
    model = _trgl(tiny_hf_resnet(num_labels=3), aux_head="linear")
    shared = model.export_stage(2, share_weights=True)
    running = shared.resnet.embedder.embedder.normalization.running_mean
    assert running.data_ptr() == model.backbone.embedder.embedder.normalization.running_mean.data_ptr()
    shared.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert torch.equal(loaded.resnet.embedder.embedder.normalization.running_mean, running)
