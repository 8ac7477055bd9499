"""A LoRA base (`peft.get_peft_model`) is cut and trained greedily: only the adapters and the heads train, the
transport term is on the branches as usual, stages export as native models with the adapters merged, and the whole
model saves and loads with its adapters."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments

peft = pytest.importorskip("peft", reason="peft is an optional extra (installed with `.[dev]`)")


def _lora_bert():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=3, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)  # fmt: skip
    base = BertForSequenceClassification(config)
    lora = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value", "dense"])
    return peft.get_peft_model(base, lora)


def _data():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 60, (32, 12), generator=generator)
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * 12] * 32,
                              "labels": torch.randint(0, 3, (32,), generator=generator).tolist()})  # fmt: skip


def test_lora_base_trains_only_its_adapters_and_heads_and_exports_merged(tmp_path):
    model = TRGLModel.from_base(_lora_bert(), TRGLConfig(num_modules=2))
    assert model.config.peft_config["peft_type"] == "LORA"
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = TRGLTrainingArguments(output_dir=str(tmp_path / "run"), trgl_mode="sequential", max_steps=3,
                                 per_device_train_batch_size=8, learning_rate=1e-2, report_to="none",
                                 save_strategy="no", disable_tqdm=True, use_cpu=True)  # fmt: skip
    TRGLTrainer(model=model, args=args, train_dataset=_data()).train()
    moved = {name for name, p in model.named_parameters() if not torch.equal(before[name], p)}
    assert any("lora_" in name for name in moved) and any(name.startswith("heads.") for name in moved)
    assert all("lora_" in name or name.startswith("heads.") for name in moved), sorted(moved)

    batch = _data().with_format("torch")[:4]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    model.eval()
    with torch.no_grad():
        module_logits = model(**inputs).module_logits
    for stage in (1, 2):
        stage_dir = tmp_path / "run" / f"stage-0{stage}"
        exported = AutoModelForSequenceClassification.from_pretrained(stage_dir).eval()
        assert type(exported).__name__ == "BertForSequenceClassification"
        assert not any("lora" in name for name, _ in exported.named_parameters())  # adapters merged
        with torch.no_grad():
            torch.testing.assert_close(exported(**inputs).logits, module_logits[:, stage - 1], rtol=1e-5, atol=1e-5)

    model.save_pretrained(tmp_path / "whole")
    reloaded = TRGLModel.from_pretrained(tmp_path / "whole").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).module_logits, module_logits, rtol=1e-6, atol=1e-6)
    reloaded.set_trainable_modules([0])
    trainable = [name for name, p in reloaded.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or name.startswith("heads.0") for name in trainable)


def test_the_transport_term_reads_the_branches_of_a_lora_model():
    from trgl_hf.modeling.peft_support import merged_state_dict

    lora = _lora_bert()
    with torch.no_grad():  # adapters that change the function (B = 0 at initialisation)
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    merged = _lora_bert().get_base_model()
    plain = BertForSequenceClassification(merged.config)
    plain.load_state_dict({k.replace(".modules_to_save.default.", ".").replace(".original_module.", "."): v
                           for k, v in merged_state_dict(lora.get_base_model()).items()
                           if ".original_module." not in k})  # fmt: skip
    ours_model = TRGLModel.from_base(lora, TRGLConfig(num_modules=2)).train()
    theirs_model = TRGLModel.from_base(plain, TRGLConfig(num_modules=2)).train()
    batch = _data().with_format("torch")[:4]
    ours = [s.transport for s in ours_model.iter_modules(input_ids=batch["input_ids"], labels=batch["labels"])]
    theirs = [s.transport for s in theirs_model.iter_modules(input_ids=batch["input_ids"], labels=batch["labels"])]
    torch.testing.assert_close(torch.stack(ours), torch.stack(theirs), rtol=1e-5, atol=1e-6)
    assert all(value > 0 for value in ours)


def test_other_adapters_are_refused():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=2)  # fmt: skip
    prompt = peft.get_peft_model(BertForSequenceClassification(config),
                                 peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4))  # fmt: skip
    with pytest.raises(ValueError, match="LoraConfig"):
        TRGLModel.from_base(prompt, TRGLConfig(num_modules=2))


def test_stages_of_a_lora_run_also_export_as_peft_adapters_over_the_truncated_base(tmp_path):
    config = _lora_bert().peft_config["default"]
    torch.manual_seed(0)
    BertForSequenceClassification(_lora_bert().get_base_model().config).save_pretrained(tmp_path / "base")  # "Hub"
    lora = peft.get_peft_model(BertForSequenceClassification.from_pretrained(tmp_path / "base"), config)
    model = TRGLModel.from_base(lora, TRGLConfig(num_modules=2, aux_head="native"))  # pretrained: mean by default
    args = TRGLTrainingArguments(output_dir=str(tmp_path / "run"), trgl_mode="sequential", max_steps=4,
                                 per_device_train_batch_size=8, learning_rate=1e-2, report_to="none",
                                 save_strategy="no", disable_tqdm=True, use_cpu=True)  # fmt: skip
    TRGLTrainer(model=model, args=args, train_dataset=_data()).train()
    batch = _data().with_format("torch")[:4]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    for stage in (1, 2):
        stage_dir = tmp_path / "run" / f"stage-0{stage}"
        merged = AutoModelForSequenceClassification.from_pretrained(stage_dir).eval()
        adapter_config = peft.PeftConfig.from_pretrained(stage_dir / "adapter")
        assert adapter_config.base_model_name_or_path is None  # AutoPeftModel cannot load the full-depth base
        base = BertForSequenceClassification.from_pretrained(tmp_path / "base", num_hidden_layers=2 * stage)
        adapted = peft.PeftModel.from_pretrained(base, stage_dir / "adapter").eval()
        with torch.no_grad():
            torch.testing.assert_close(adapted(**inputs).logits, merged(**inputs).logits, rtol=1e-5, atol=1e-5)
        card = (stage_dir / "README.md").read_text()
        assert "Or as a PEFT adapter" in card and f"num_hidden_layers={2 * stage}" in card
        assert "from_pretrained(" in card and "adapter" in card


def test_a_lora_run_with_mean_heads_exports_merged_stages_and_no_adapter(tmp_path):
    """A PEFT adapter applies to the native truncated base; a mean head has none, so the merged stage is the export."""
    model = TRGLModel.from_base(_lora_bert(), TRGLConfig(num_modules=2, aux_head="mean"))
    args = TRGLTrainingArguments(output_dir=str(tmp_path / "run"), trgl_mode="sequential", max_steps=2,
                                 per_device_train_batch_size=8, learning_rate=1e-2, report_to="none",
                                 save_strategy="no", disable_tqdm=True, use_cpu=True)  # fmt: skip
    TRGLTrainer(model=model, args=args, train_dataset=_data()).train()
    batch = _data().with_format("torch")[:4]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    model.eval()
    with torch.no_grad():
        module_logits = model(**inputs).module_logits
    for stage in (1, 2):
        stage_dir = tmp_path / "run" / f"stage-0{stage}"
        assert not (stage_dir / "adapter").exists()
        exported = AutoModelForSequenceClassification.from_pretrained(stage_dir).eval()
        assert type(exported).__name__ == "TRGLStageForSequenceClassification"
        assert not any("lora" in name for name, _ in exported.named_parameters())
        with torch.no_grad():
            torch.testing.assert_close(exported(**inputs).logits, module_logits[:, stage - 1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="native heads"):
        from trgl_hf.export.peft_adapters import save_stage_adapter

        save_stage_adapter(model, 1, tmp_path / "adapter")
