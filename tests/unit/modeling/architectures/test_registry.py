"""Every registered architecture is trained exactly; every other model is refused before training.

For each supported task class (tiny config): the transport term equals an independent ground truth (hooks on the
uncut model's branch modules, i.e. what each branch adds to the residual stream), one training step runs, and every
stage loads with the plain Auto class and reproduces the TRGL model's head-k logits, and the whole TRGL model
round-trips through `save_pretrained` / `from_pretrained`.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as tf
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from trgl_hf import TRGLConfig, TRGLModel, supported_architectures
from trgl_hf.modeling.architectures.registry import REGISTRY

from ....conftest import tiny_cifar_resnet, tiny_hf_resnet
from .cases_common import TEXT, VIT
from .cases_decoders import DECODERS_CASES
from .cases_encoders import ENCODERS_CASES
from .cases_mixtures import MIXTURES_CASES
from .cases_tasks import TASKS_CASES
from .cases_vision import VISION_CASES

# class name -> (config class, config kwargs, ground-truth branch modules per block[, how branches combine]); the rows
# live in cases_encoders.py, cases_decoders.py, cases_mixtures.py, cases_vision.py and cases_tasks.py.
CASES = {**ENCODERS_CASES, **DECODERS_CASES, **MIXTURES_CASES, **VISION_CASES, **TASKS_CASES}

AUTO = {"ForCausalLM": AutoModelForCausalLM, "LMHeadModel": AutoModelForCausalLM,
        "ForSequenceClassification": AutoModelForSequenceClassification,
        "ForImageClassification": AutoModelForImageClassification,
        "ForTokenClassification": AutoModelForTokenClassification, "ForMaskedLM": AutoModelForMaskedLM}  # fmt: skip


def build(class_name: str, seed: int = 0):
    torch.manual_seed(seed)
    if class_name == "ResNetForImageClassification":
        return tiny_hf_resnet(num_labels=3, depths=(2, 2))
    if class_name == "CifarResNetForImageClassification":
        return tiny_cifar_resnet(num_labels=3, num_channels=3, depths=(2, 1, 1))
    config_name, kwargs, *_ = CASES[class_name]
    config = getattr(tf, config_name)(**kwargs, num_labels=3)
    config._attn_implementation = "eager"
    return getattr(tf, class_name)(config)


def inputs_for(model):
    torch.manual_seed(1)
    if model.main_input_name == "pixel_values":
        size = getattr(model.config, "image_size", None) or 32
        size = size[0] if isinstance(size, (list, tuple)) else size  # PVT-v2 stores (height, width)
        return {"pixel_values": torch.randn(2, 3, size, size)}, torch.tensor([0, 2])
    input_ids = torch.randint(3, 40, (2, 7))
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, 5:] = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    attention_mask[1, 5:] = 0
    is_lm = not type(model).__name__.endswith("Classification")
    labels = input_ids.masked_fill(attention_mask == 0, -100) if is_lm else torch.tensor([0, 2])
    if type(model).__name__.endswith("ForTokenClassification"):  # a class per real token
        labels = torch.randint(0, 3, (2, 7)).masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask}, labels


def perturb(model):
    """Non-trivial branches: random block weights (a from-scratch model's zero-initialised parts would hide bugs)."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 1 and "embed" not in name:
                param.add_(0.2 * torch.randn(param.shape, generator=generator))


def ground_truth_energies(base, class_name, inputs):
    """Transport energy of every block, from hooks on the branch modules of the uncut model (mean over the real tokens
    x features of padded text)."""
    _, _, names, *combine = CASES[class_name]
    located = TRGLModel.from_base(copy.deepcopy(base), TRGLConfig(num_modules=1))  # where the blocks are
    names_in_copy = {id(module): name for name, module in located.backbone.named_modules()}
    uncut = dict(base.base_model.named_modules())
    blocks = [uncut[names_in_copy[id(block)]] for block in located.adapter.blocks]
    outputs: list[list[torch.Tensor]] = [[] for _ in blocks]
    handles = []
    for index, block in enumerate(blocks):
        for name in names:

            def hook(module, args, output, index=index):
                output = output[0] if isinstance(output, tuple) else output
                outputs[index].append(output.clone())

            handles.append(block.get_submodule(name).register_forward_hook(hook))
    with torch.no_grad():
        base(**inputs)
    for handle in handles:
        handle.remove()
    energies = []
    for index, branches in enumerate(outputs):
        assert len(branches) == len(names), (index, len(branches))
        if class_name.startswith("OPT"):  # OPT's fc2 runs on the flattened stream
            branches = [b.reshape(branches[0].shape) for b in branches]
        if combine == ["sum"]:
            branches = [sum(branches)]
        mask = inputs.get("attention_mask")  # padded text: the mean over real tokens x features
        real = mask.bool()[..., None] if mask is not None else None
        energies.append(sum(b.float().pow(2)[real.expand_as(b)].mean() if real is not None else b.float().pow(2).mean()
                            for b in branches))  # fmt: skip
    return energies


SUPPORTED = sorted(CASES)


def test_every_registered_class_has_a_case():
    registered = {name for classes in supported_architectures().values() for name in classes}
    assert registered == set(CASES)


@pytest.mark.parametrize("class_name", SUPPORTED)
def test_transport_is_exact_training_runs_and_stages_reproduce_the_heads(class_name, tmp_path):
    base = build(class_name).eval()
    perturb(base)
    inputs, labels = inputs_for(base)
    expected_blocks = ground_truth_energies(base, class_name, inputs)
    with torch.no_grad():
        base_logits = base(**inputs).logits

    head = "linear" if "ResNet" in class_name else None  # ResNets' native head (the conv head is tested elsewhere)
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=2, tau=1.0, aux_head=head)).eval()
    split = model.config.split
    with torch.no_grad():
        steps = list(model.iter_modules(labels=labels, **inputs))
    expected = [sum(expected_blocks[: split[0]]), sum(expected_blocks[split[0] :])]
    for step, value in zip(steps, expected):
        torch.testing.assert_close(step.transport, value.reshape(()), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(steps[-1].logits, base_logits, rtol=1e-5, atol=1e-5)  # last head = the base's head

    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = [step.loss for step in model.iter_modules(labels=labels, **inputs)]
    assert all(torch.isfinite(loss) for loss in losses)
    sum(losses).backward()
    optimizer.step()

    model.eval()
    with torch.no_grad():
        steps = list(model.iter_modules(**inputs))
    model.save_pretrained(tmp_path / "whole")  # the whole TRGL model round-trips too
    with torch.no_grad():
        reloaded = [
            step.logits for step in TRGLModel.from_pretrained(tmp_path / "whole").eval().iter_modules(**inputs)
        ]
    for step, logits in zip(steps, reloaded):
        torch.testing.assert_close(logits, step.logits)
    auto = next(auto for suffix, auto in AUTO.items() if class_name.endswith(suffix))
    for stage in (1, 2):
        model.export_stage(stage).save_pretrained(tmp_path / str(stage))
        assert ("auto_map" in (tmp_path / str(stage) / "config.json").read_text()) == class_name.startswith("Cifar")
        loaded = auto.from_pretrained(tmp_path / str(stage)).eval()
        assert type(loaded).__name__ == class_name or class_name.startswith(("ResNet", "Cifar"))
        with torch.no_grad():
            torch.testing.assert_close(loaded(**inputs).logits, steps[stage - 1].logits, rtol=1e-5, atol=1e-5)


REFUSED = {
    "AlbertForSequenceClassification": ("AlbertConfig", dict(TEXT, num_hidden_layers=2, embedding_size=8), "shares"),
    "BertForQuestionAnswering": ("BertConfig", dict(TEXT, num_hidden_layers=2), "question answering"),
    "BertModel": ("BertConfig", dict(TEXT, num_hidden_layers=2), "bare backbone"),
    "T5ForSequenceClassification": ("T5Config", dict(vocab_size=40, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2), "encoder-decoder"),
    "MambaForCausalLM": ("MambaConfig", dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, state_size=4), "state-space"),
    "DeiTForImageClassificationWithTeacher": ("DeiTConfig", VIT, "distillation"),
    "MobileNetV2ForImageClassification": ("MobileNetV2Config", dict(image_size=32), "inverted-residual"),
    "GPT2DoubleHeadsModel": ("GPT2Config", dict(vocab_size=40, n_embd=16, n_layer=2, n_head=2), "task head"),
}  # fmt: skip


@pytest.mark.parametrize("class_name", sorted(REFUSED))
def test_unsupported_models_are_refused_by_name(class_name):
    config_name, kwargs, reason = REFUSED[class_name]
    model = getattr(tf, class_name)(getattr(tf, config_name)(**kwargs))
    with pytest.raises(ValueError, match=rf"{class_name}.*{reason}|{reason}.*{class_name}") as error:
        TRGLModel.from_base(model, TRGLConfig(num_modules=2))
    assert "Supported" in str(error.value) or "supported through" in str(error.value)


def test_a_trgl_model_and_bad_configurations_are_refused():
    base = build("BertForSequenceClassification")
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=2))
    with pytest.raises(ValueError, match="already a TRGLModel"):
        TRGLModel.from_base(model, TRGLConfig(num_modules=2))
    gpt2 = tf.GPT2ForSequenceClassification(tf.GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=2))
    with pytest.raises(ValueError, match="pad_token_id"):
        TRGLModel.from_base(gpt2, TRGLConfig(num_modules=2))
    deberta = tf.DebertaV2ForSequenceClassification(
        tf.DebertaV2Config(**TEXT, num_hidden_layers=2, conv_kernel_size=3)
    )
    with pytest.raises(ValueError, match="conv_kernel_size"):
        TRGLModel.from_base(deberta, TRGLConfig(num_modules=2))


def test_registry_entries_are_unique_per_model_type():
    assert len({id(spec) for spec in REGISTRY.values()}) == len({spec.name for spec in REGISTRY.values()})
