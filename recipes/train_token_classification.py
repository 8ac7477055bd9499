"""Train a token classifier (NER, POS, ...) module-wise with TRGL on CoNLL-style files.

    python recipes/train_token_classification.py --train_file train.conll --validation_file dev.conll \
        --model_name_or_path path/to/bert --output_dir ner-out --num_train_epochs 3 --report_to none

A CoNLL-style file holds one token per line, its tag in the last column (`EU B-ORG`, or `EU NNP B-NP B-ORG`), and an
empty line between sentences (`-DOCSTART-` lines are skipped). Words are split into sub-tokens with
`is_split_into_words=True`; a word's first sub-token carries its tag and the others are ignored (`-100`, the
transformers tutorials' alignment), unless `--label_all_tokens`. From `--model_name_or_path` (its tokenizer) or from
scratch (`--hidden_size`, a word-level vocabulary of the training file). Reports every module's token accuracy and,
for IOB2 tags, entity precision / recall / F1. Each stage is a plain `*ForTokenClassification` with the tokenizer, so
`pipeline("token-classification", model=stage_dir)` tags a sentence. Runs under `accelerate launch` too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from common import TRGLArguments, label_maps, logger, parse, setup_logging, write_results
from datasets import Dataset, DatasetDict
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    AutoModelForTokenClassification,
    AutoTokenizer,
    BertConfig,
    BertForTokenClassification,
    DataCollatorForTokenClassification,
    PreTrainedTokenizerFast,
    set_seed,
)

from trgl_hf import TRGLModel, TRGLTrainer, TRGLTrainingArguments

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass
class ModelArguments:
    """A Hub id / local path, or a small BERT built from a config."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "Hub id or local path."})
    hidden_size: int = field(default=128, metadata={"help": "Hidden size of a BERT built from scratch."})
    num_hidden_layers: int = field(default=4, metadata={"help": "Depth of a BERT built from scratch."})


@dataclass
class DataArguments:
    """Which CoNLL-style files, and how to label sub-tokens."""

    train_file: str = field(metadata={"help": "CoNLL-style file: token ... tag per line, sentences split by a blank."})
    validation_file: str | None = field(default=None, metadata={"help": "Same format; default: no evaluation."})
    max_length: int = field(default=128, metadata={"help": "Sub-tokens per sentence (longer ones are truncated)."})
    label_all_tokens: bool = field(default=False, metadata={"help": "Give every sub-token its word's tag."})


def read_conll(path: str) -> dict[str, list[list[str]]]:
    """`{"tokens": [...], "tags": [...]}`, one list per sentence, from a CoNLL-style file."""
    sentences, tokens, tags = {"tokens": [], "tags": []}, [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines() + [""]:
        columns = line.split()
        if columns and columns[0] != "-DOCSTART-":
            tokens.append(columns[0])
            tags.append(columns[-1])
        elif tokens:
            sentences["tokens"].append(tokens)
            sentences["tags"].append(tags)
            tokens, tags = [], []
    if not sentences["tokens"]:
        raise ValueError(f"{path} holds no sentence: give one token and its tag per line, sentences separated by an "
                         "empty line.")  # fmt: skip
    return sentences


def word_tokenizer(sentences: list[list[str]]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (lower-cased) over the training words, BERT's special tokens around each sentence."""
    words = sorted({word.lower() for sentence in sentences for word in sentence})
    vocabulary = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *words])}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocabulary["[CLS]"]), ("[SEP]", vocabulary["[SEP]"])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")  # fmt: skip


def aligned(sentences: dict, tokenizer, tag_ids: dict[str, int], args: DataArguments) -> Dataset:
    """Sub-tokens of every sentence with their labels: a word's tag on its first sub-token (every sub-token with
    `label_all_tokens`), -100 on the others and on special tokens."""
    unknown = sorted({tag for tags in sentences["tags"] for tag in tags} - set(tag_ids))
    if unknown:
        raise ValueError(f"Tags {unknown} are not in the training file's tags {sorted(tag_ids)}: fix the file or add "
                         "them to the training data.")  # fmt: skip
    encoded = tokenizer(sentences["tokens"], is_split_into_words=True, truncation=True, max_length=args.max_length)
    labels = []
    for index, tags in enumerate(sentences["tags"]):
        row, previous = [], None
        for word in encoded.word_ids(index):
            first = word is not None and word != previous
            row.append(tag_ids[tags[word]] if word is not None and (first or args.label_all_tokens) else -100)
            previous = word
        labels.append(row)
    return Dataset.from_dict({**encoded, "labels": labels})


def build(model_args: ModelArguments, data_args: DataArguments) -> tuple:
    train = read_conll(data_args.train_file)
    names = sorted({tag for tags in train["tags"] for tag in tags})
    maps = label_maps(names)
    if model_args.model_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
        base = AutoModelForTokenClassification.from_pretrained(model_args.model_name_or_path, num_labels=len(names),
                                                               **maps)  # fmt: skip
    else:
        tokenizer = word_tokenizer(train["tokens"])
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=model_args.hidden_size,
                            num_hidden_layers=model_args.num_hidden_layers, num_attention_heads=4,
                            intermediate_size=4 * model_args.hidden_size, max_position_embeddings=data_args.max_length,
                            pad_token_id=tokenizer.pad_token_id, num_labels=len(names), **maps)  # fmt: skip
        base = BertForTokenClassification(config)
    tag_ids = maps["label2id"]
    splits = DatasetDict(train=aligned(train, tokenizer, tag_ids, data_args))
    if data_args.validation_file:
        splits["validation"] = aligned(read_conll(data_args.validation_file), tokenizer, tag_ids, data_args)
    return base, tokenizer, splits


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, trgl_args, training_args = parse(
        (ModelArguments, DataArguments, TRGLArguments, TRGLTrainingArguments), argv
    )
    setup_logging(training_args)
    set_seed(training_args.seed)
    base, tokenizer, splits = build(model_args, data_args)
    model = TRGLModel.from_base(base, trgl_args.to_config(base_model_name_or_path=model_args.model_name_or_path))
    logger.info("Cut %s into %d modules (layers per module: %s).", type(base).__name__, model.num_modules,
                model.config.split)  # fmt: skip
    trainer = TRGLTrainer(model=model, args=training_args, train_dataset=splits["train"],
                          eval_dataset=splits.get("validation"), processing_class=tokenizer,
                          data_collator=DataCollatorForTokenClassification(tokenizer))  # fmt: skip
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = {"eval": trainer.evaluate()} if "validation" in splits else {}
    write_results(trainer, metrics, "f1" if model.task.selection_metric == "f1" else "accuracy")
    return metrics


if __name__ == "__main__":
    main()
