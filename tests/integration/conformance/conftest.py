"""Conformance suite: the same user code run through `transformers.Trainer` and `TRGLTrainer`.

Shared builders: tiny models built from configs (BERT 32 x 2 layers with a WordPiece tokenizer built from a word list,
GPT-2, ViT with a small image processor, ResNet), tiny in-memory datasets, training arguments for both trainers, a
callback that records every event, and `run_pair`, which trains a model with `Trainer` and the same model wrapped at
K = 1 (`TRGLConfig(num_modules=1, use_transport=False)`: end-to-end training) with `TRGLTrainer`.

Oracle tolerance: fp32 on CPU, one thread, dropout off, same seed and data: K = 1 is end-to-end training computed
by the same kernels on the same tensors, so weights, losses, metrics and predictions are compared with
`ORACLE_TOL` (absolute and relative 1e-6; what is reached in practice is reported by the tests' docstrings).
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    ResNetConfig,
    ResNetForImageClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments

ORACLE_TOL = dict(rtol=1e-6, atol=1e-6)
REPO_ROOT = Path(__file__).resolve().parents[3]

SENTENCES = [
    ("a gripping and beautifully acted film", 1),
    ("dull predictable and far too long", 0),
    ("the cast is wonderful and the script sparkles", 1),
    ("i walked out halfway through", 0),
    ("an unexpectedly moving story about a family", 1),
    ("the jokes never land", 0),
    ("visually stunning from start to finish", 1),
    ("a tedious mess", 0),
    ("warm funny and wise", 1),
    ("the plot makes no sense at all and the acting is wooden", 0),
    ("a small film with a big heart", 1),
    ("boring", 0),
    ("one of the best films of the year", 1),
    ("too long too loud and too dumb", 0),
    ("the music is lovely", 1),
    ("nothing happens for two hours", 0),
]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = sorted({word for sentence, _ in SENTENCES for word in sentence.split()})
VOCAB = SPECIAL + WORDS + ["##s", "##ing", "##ed"]


# ---------------------------------------------------------------------------------------------------- text


def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    """A real BERT-style WordPiece tokenizer (normaliser, pre-tokenizer, [CLS] ... [SEP]) over the sentences' words."""
    backend = Tokenizer(models.WordPiece({token: i for i, token in enumerate(VOCAB)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_input_names=["input_ids", "attention_mask"],
    )  # fmt: skip


def text_dataset(tokenizer, rows: int = 16, label_column: str = "label") -> Dataset:
    """run_glue's preprocessing: a `sentence` / `label` table tokenized with `.map(batched=True)` (no padding: the
    collator pads each batch), the text column removed."""
    picked = [SENTENCES[i % len(SENTENCES)] for i in range(rows)]
    raw = Dataset.from_dict({"sentence": [s for s, _ in picked], label_column: [y for _, y in picked]})
    return raw.map(lambda batch: tokenizer(batch["sentence"], truncation=True, max_length=32), batched=True,
                   remove_columns=["sentence"])  # fmt: skip


def tiny_bert(seed: int = 0, num_layers: int = 2, **overrides) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    settings = dict(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=2, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, pad_token_id=0, id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )  # fmt: skip
    settings.update(overrides)
    return BertForSequenceClassification(BertConfig(**settings))


def tiny_gpt2(seed: int = 0, num_layers: int = 2, tie_word_embeddings: bool = True) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(VOCAB), n_embd=32, n_layer=num_layers, n_head=2, n_positions=64,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=2, eos_token_id=3,
                        pad_token_id=0, tie_word_embeddings=tie_word_embeddings)  # fmt: skip
    return GPT2LMHeadModel(config)


def lm_dataset(tokenizer, rows: int = 16) -> Dataset:
    """run_clm's tokenized text without labels: `DataCollatorForLanguageModeling(mlm=False)` makes them."""
    picked = [SENTENCES[i % len(SENTENCES)][0] for i in range(rows)]
    raw = Dataset.from_dict({"text": picked})
    return raw.map(lambda batch: tokenizer(batch["text"]), batched=True, remove_columns=["text"])


# ---------------------------------------------------------------------------------------------------- images


def image_processor() -> ViTImageProcessor:
    return ViTImageProcessor(size={"height": 8, "width": 8}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def image_dataset(rows: int = 16, seed: int = 0) -> Dataset:
    """run_image_classification's raw data: PIL images and a `label` column (transformed on the fly)."""
    rng = np.random.default_rng(seed)
    labels = [i % 3 for i in range(rows)]
    images = [Image.fromarray((rng.random((10, 10, 3)) * 80 + 60 * y).astype(np.uint8)) for y in labels]
    return Dataset.from_dict({"image": images, "label": labels})


def image_transform(processor: ViTImageProcessor) -> Callable[[dict], dict]:
    """run_image_classification's `set_transform` function: pixel_values from the images, labels kept."""

    def transform(batch):
        pixel_values = processor([image.convert("RGB") for image in batch["image"]], return_tensors="pt")
        return {"pixel_values": pixel_values["pixel_values"], "labels": batch["label"]}

    return transform


def image_collate(examples):
    """run_image_classification's `collate_fn`."""
    return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.tensor([e["labels"] for e in examples])}  # fmt: skip


def tiny_vit(seed: int = 0, num_layers: int = 2) -> ViTForImageClassification:
    torch.manual_seed(seed)
    config = ViTConfig(hidden_size=16, num_hidden_layers=num_layers, num_attention_heads=2, intermediate_size=32,
                       image_size=8, patch_size=4, num_labels=3, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0, id2label={0: "dark", 1: "mid", 2: "light"},
                       label2id={"dark": 0, "mid": 1, "light": 2})  # fmt: skip
    return ViTForImageClassification(config)


def tiny_resnet(seed: int = 0) -> ResNetForImageClassification:
    torch.manual_seed(seed)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                          num_labels=3)  # fmt: skip
    return ResNetForImageClassification(config)


def pixel_dataset(rows: int = 16, size: int = 8, seed: int = 0) -> Dataset:
    """Stored tensors (no transform): `pixel_values` and `labels`, for `default_data_collator`."""
    rng = np.random.default_rng(seed)
    labels = np.arange(rows) % 3
    pixels = (rng.normal(size=(rows, 3, size, size)) + labels[:, None, None, None]).astype(np.float32)
    return Dataset.from_dict({"pixel_values": pixels, "labels": labels}).with_format("torch")


# ---------------------------------------------------------------------------------------------------- arguments


BASE_ARGS = dict(
    per_device_train_batch_size=4, per_device_eval_batch_size=4, learning_rate=1e-3, report_to="none",
    save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0, logging_steps=1, max_steps=4,
)  # fmt: skip


def plain_args(output_dir, **overrides) -> TrainingArguments:
    return TrainingArguments(output_dir=str(output_dir), **{**BASE_ARGS, **overrides})


def trgl_args(output_dir, **overrides) -> TRGLTrainingArguments:
    overrides.setdefault("trgl_mode", "sequential")
    return TRGLTrainingArguments(output_dir=str(output_dir), **{**BASE_ARGS, **overrides})


def k1(base, **config) -> TRGLModel:
    """The oracle's wrapping: one module, no transport term = end-to-end training of `base`."""
    return TRGLModel.from_base(base, TRGLConfig(num_modules=1, use_transport=False, **config))


def wrap(base, num_modules: int = 2, **config) -> TRGLModel:
    return TRGLModel.from_base(base, TRGLConfig(num_modules=num_modules, **config))


@dataclass
class Pair:
    """A `Trainer` and a K = 1 `TRGLTrainer` given the same user code, trained (or not) the same way."""

    plain: Trainer
    trgl: TRGLTrainer
    plain_output: Any = None
    trgl_output: Any = None
    extra: dict = field(default_factory=dict)

    def stage(self):
        """The TRGL model's only stage, a native model comparable parameter by parameter with the plain one."""
        return self.trgl.model.export_stage(1)


def run_pair(tmp_path, make_model: Callable[[], Any], *, train: bool = True, plain_kwargs=None, trgl_kwargs=None,
             args: dict | None = None, trgl_config: dict | None = None, **trainer_kwargs) -> Pair:  # fmt: skip
    """Build the same model twice (`make_model` seeds itself), hand one to `Trainer` and the other, wrapped at K = 1,
    to `TRGLTrainer` with the same arguments and trainer keywords (callbacks are copied per trainer), and train each
    before the next is built (each trainer seeds the global generators when it is built)."""
    args = args or {}
    trainers, outputs = [], []
    for kind, cls, arguments, model, extra in (
        ("plain", Trainer, plain_args, make_model(), plain_kwargs or {}),
        ("trgl", TRGLTrainer, trgl_args, k1(make_model(), **(trgl_config or {})), trgl_kwargs or {}),
    ):
        kwargs = {k: copy.deepcopy(v) if k == "callbacks" else v for k, v in trainer_kwargs.items()}
        kwargs.update(extra)
        trainer = cls(model=model, args=arguments(tmp_path / kind, **args), **kwargs)  # seeds the global generators
        trainers.append(trainer)
        outputs.append(trainer.train() if train else None)  # before the next trainer is built and seeds again
    pair = Pair(*trainers)
    pair.plain_output, pair.trgl_output = outputs
    return pair


def assert_same_weights(stage, plain_model, tol=ORACLE_TOL, moved_from=None):
    """Every parameter and buffer of the exported stage equals the plain model's (`tol`); with `moved_from`
    (a state dict before training), also check that training changed the weights (the comparison is not vacuous)."""
    mine, theirs = stage.state_dict(), plain_model.state_dict()
    assert set(mine) == set(theirs), sorted(set(mine) ^ set(theirs))
    worst = 0.0
    for name, tensor in theirs.items():
        torch.testing.assert_close(mine[name].to(tensor.dtype), tensor, msg=lambda m, n=name: f"{n}: {m}", **tol)
        if tensor.is_floating_point():
            worst = max(worst, float((mine[name].float() - tensor.float()).abs().max()))
    if moved_from is not None:
        assert any(not torch.equal(moved_from[n], t) for n, t in theirs.items() if n in moved_from), "nothing trained"
    return worst


# ---------------------------------------------------------------------------------------------------- callbacks


class Recorder(TrainerCallback):
    """Every callback event with the state's global step (and max_steps), in order."""

    EVENTS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_step_end", "on_log",
              "on_evaluate", "on_save", "on_predict")  # fmt: skip

    def __init__(self):
        self.events: list[tuple[str, int]] = []
        self.max_steps: list[int] = []
        self.logs: list[dict] = []

    def __deepcopy__(self, memo):
        return Recorder()

    def steps(self, event: str) -> list[int]:
        return [step for name, step in self.events if name == event]

    def count(self, event: str) -> int:
        return len(self.steps(event))


def _record(event):
    def handler(self, args, state, control, **kwargs):
        self.events.append((event, state.global_step))
        if event == "on_step_end":
            self.max_steps.append(state.max_steps)
        if event == "on_log":
            self.logs.append({**kwargs.get("logs", {}), "_step": state.global_step})

    return handler


for _event in Recorder.EVENTS:
    setattr(Recorder, _event, _record(_event))


def accuracy(eval_prediction) -> dict[str, float]:
    """The tutorials' `compute_metrics` (what `evaluate.load("accuracy")` computes), without the network."""
    predictions = np.argmax(eval_prediction.predictions, axis=-1)
    return {"accuracy": float((predictions == eval_prediction.label_ids).mean())}


def strictly_increasing(values) -> bool:
    return all(a < b for a, b in zip(values, values[1:]))


# ---------------------------------------------------------------------------------------------------- fake Hub


def load_fakehub():
    """tests/fakehub.py (loaded by file: pytest runs with --import-mode=importlib), shared with the hub tests."""
    name = "trgl_hf_tests_fakehub"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "tests" / "fakehub.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def fake_hub():
    fakehub = load_fakehub()
    with fakehub.start_fake_hub() as fake, fakehub.fake_hub_session():
        yield fake


@pytest.fixture
def tokenizer():
    return wordpiece_tokenizer()


@pytest.fixture
def collator(tokenizer):
    return DataCollatorWithPadding(tokenizer)
