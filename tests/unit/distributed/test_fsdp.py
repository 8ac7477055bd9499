"""FSDP2 per module (`trgl_hf.distributed.fsdp`): what cannot work is refused with its fix, before any process is
launched (the two-process runs are in tests/integration/distributed/test_fsdp.py)."""

import os

import pytest

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments


def trainer_for(make_cifar_resnet, tmp_path, **kwargs):
    model = TRGLModel.from_base(make_cifar_resnet(), TRGLConfig(num_modules=3))
    args = TRGLTrainingArguments(output_dir=str(tmp_path / "run"), trgl_mode="sequential", max_steps=1,
                                 report_to="none", use_cpu=True, **kwargs)  # fmt: skip
    return TRGLTrainer(model=model, args=args)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"fsdp": True, "fsdp_config": {"fsdp_version": 1}}, "FSDP2 only"),
        ({"fsdp": True, "fsdp_config": {"fsdp_version": 2, "cpu_offload": True}}, "CPU offload"),
        ({"fsdp": True, "fsdp_config": {"fsdp_version": 2}, "trgl_prefix_cache": "always"}, "trgl_prefix_cache"),
        ({"fsdp": True, "fsdp_config": {"fsdp_version": 2}, "save_strategy": "steps"}, "save_strategy='no'"),
    ],
)
def test_fsdp_refuses_what_cannot_work(make_cifar_resnet, tmp_path, settings, message):
    settings = {"save_strategy": "no", **settings}
    with pytest.raises(ValueError, match=message):
        trainer_for(make_cifar_resnet, tmp_path, **settings)
    assert os.environ.get("ACCELERATE_USE_FSDP") is None  # refused before any Accelerator saw the plugin


def test_fsdp_from_accelerate_config_refuses_fsdp1_and_a_single_process(make_cifar_resnet, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ValueError, match="FSDP2 only"):
        trainer_for(make_cifar_resnet, tmp_path, save_strategy="no")
    monkeypatch.setenv("FSDP_VERSION", "2")
    with pytest.raises(ValueError, match="single process"):
        trainer_for(make_cifar_resnet, tmp_path, save_strategy="no")


def test_fsdp_refuses_a_lora_base(tmp_path, monkeypatch):
    peft = pytest.importorskip("peft")
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=3)  # fmt: skip
    lora = peft.get_peft_model(BertForSequenceClassification(config),
                               peft.LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query"]))  # fmt: skip
    model = TRGLModel.from_base(lora, TRGLConfig(num_modules=2))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    args = TRGLTrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True, save_strategy="no")
    with pytest.raises(ValueError, match="LoRA bases are not supported with FSDP"):
        TRGLTrainer(model=model, args=args)


def test_fsdp_refuses_tied_decoder_heads_before_training(tmp_path, monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=32, max_position_embeddings=32)  # fmt: skip
    model = TRGLModel.from_base(LlamaForCausalLM(config), TRGLConfig(num_modules=2, aux_head="tied"))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    args = TRGLTrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True, save_strategy="no")
    with pytest.raises(ValueError, match="aux_head='native'"):
        TRGLTrainer(model=model, args=args)
