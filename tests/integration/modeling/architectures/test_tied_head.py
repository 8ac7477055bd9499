"""`aux_head="tied"` in real runs: in every mode, every stage equals its head and its evaluation after the whole
run."""

import codecs
import this  # noqa: F401  (the Zen of Python: a small real text corpus that ships with Python)

import pytest
import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments

ZEN = codecs.decode(this.s, "rot13")
VOCAB = sorted(set(ZEN))


def build(family: str):
    """GPT-2 ties its LM head to the input embedding; this Llama has an untied `lm_head`."""
    torch.manual_seed(0)
    if family == "gpt2":
        config = GPT2Config(vocab_size=len(VOCAB), n_embd=16, n_layer=3, n_head=2, n_positions=64, bos_token_id=0,
                            eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
        return GPT2LMHeadModel(config)
    config = LlamaConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=32, bos_token_id=0, eos_token_id=0)  # fmt: skip
    return LlamaForCausalLM(config)


def char_blocks(length: int = 16):
    ids = [VOCAB.index(c) for c in ZEN]
    blocks = [ids[i : i + length] for i in range(0, 24 * length, length)]
    return Dataset.from_dict({"input_ids": blocks, "labels": blocks}).with_format("torch")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("mode", ["parallel", "sequential", "multilap"])
def test_every_stage_equals_its_head_and_its_evaluation_after_the_whole_run(family, mode, tmp_path):
    dataset = char_blocks()
    model = TRGLModel.from_base(build(family), TRGLConfig(num_modules=3, aux_head="tied", lm_loss_chunk_tokens=20))
    args = TRGLTrainingArguments(
        output_dir=str(tmp_path), trgl_mode=mode, max_steps=3, per_device_train_batch_size=8, learning_rate=1e-2,
        per_device_eval_batch_size=64, report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True,
    )  # fmt: skip
    trainer = TRGLTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset)
    trainer.train()
    final = trainer.evaluate()
    model.eval()
    rows = dataset[:]
    with torch.no_grad():
        heads = [step.logits for step in model.iter_modules(input_ids=rows["input_ids"])]
    for stage in (1, 2, 3):
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / f"stage-0{stage}").eval()
        assert type(loaded) is type(model.export_stage(stage)) and loaded.config.num_hidden_layers == stage
        with torch.no_grad():
            output = loaded(input_ids=rows["input_ids"], labels=rows["labels"])
        torch.testing.assert_close(output.logits, heads[stage - 1], rtol=1e-5, atol=1e-5)
        recorded = trainer.stage_metrics[stage]["loss"]  # evaluated when the stage was written
        assert output.loss.item() == pytest.approx(recorded, rel=1e-5)
        assert output.loss.item() == pytest.approx(final[f"eval_module_{stage}_loss"], rel=1e-5)
