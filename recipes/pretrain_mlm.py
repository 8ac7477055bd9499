"""Pretrain a small BERT from scratch, module-wise with TRGL, as a masked language model on a text file.

    python recipes/pretrain_mlm.py --train_file ../shared/data/tiny_shakespeare/input.txt --output_dir mlm-out \
        --max_steps 200 --report_to none

A WordPiece vocabulary is trained on the text (lower-cased, BERT's pre-tokenizer and special tokens; or
`--tokenizer_name_or_path` loads a saved one: the training is not deterministic across processes), the text is cut
into fixed-length blocks (`[CLS] ... [SEP]`), and `DataCollatorForLanguageModeling` masks 15% of the tokens of every
batch (80% `[MASK]`, 10% random, 10% kept), so every module's head learns to predict the masked tokens. Reports each
module's masked-token loss and perplexity. Each stage is a plain `BertForMaskedLM` with the tokenizer, so
`pipeline("fill-mask", model=stage_dir)` fills a `[MASK]`. Runs under `accelerate launch` too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common import TRGLArguments, logger, parse, setup_logging, write_results
from datasets import Dataset, DatasetDict
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    DataCollatorForLanguageModeling,
    PreTrainedTokenizerFast,
    set_seed,
)

from trgl_hf import TRGLModel, TRGLTrainer, TRGLTrainingArguments

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass
class ModelArguments:
    """The BERT built from scratch."""

    hidden_size: int = field(default=128, metadata={"help": "Hidden size."})
    num_hidden_layers: int = field(default=8, metadata={"help": "Depth (cut into --num_modules modules)."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads."})
    vocab_size: int = field(default=4000, metadata={"help": "Size of the WordPiece vocabulary trained on the text."})
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A saved tokenizer (a folder, e.g. a stage of an earlier run, or a Hub id) to use instead "
                  "of training one. WordPiece training is not deterministic across processes (huggingface/tokenizers"
                  "#1794), so a rerun that must reproduce an earlier one passes the tokenizer that run saved."},
    )  # fmt: skip


@dataclass
class DataArguments:
    """Which text and how to cut it."""

    train_file: str = field(metadata={"help": "Plain text file."})
    block_size: int = field(default=64, metadata={"help": "Tokens per example, [CLS] and [SEP] included."})
    mlm_probability: float = field(default=0.15, metadata={"help": "Share of the tokens masked in every batch."})
    validation_fraction: float = field(default=0.05, metadata={"help": "Tail of the text used for validation."})
    max_train_blocks: int | None = field(default=None, metadata={"help": "Keep the first N training blocks."})
    max_eval_blocks: int | None = field(default=None, metadata={"help": "Keep the first N validation blocks."})


def wordpiece_tokenizer(text: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer (lower-cased) trained on `text`; it adds `[CLS]` and `[SEP]` on encode."""
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    backend.train_from_iterator(text.splitlines(), trainer=trainer)
    cls, sep = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")  # fmt: skip


def blocks_of(text: str, tokenizer: PreTrainedTokenizerFast, block_size: int, limit: int | None) -> Dataset:
    """`text`'s tokens in consecutive blocks of `block_size - 2`, each wrapped in `[CLS] ... [SEP]`."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    body = block_size - 2
    blocks = [[tokenizer.cls_token_id, *ids[i : i + body], tokenizer.sep_token_id]
              for i in range(0, len(ids) - body + 1, body)]  # fmt: skip
    blocks = blocks[:limit] if limit else blocks
    return Dataset.from_dict({"input_ids": blocks, "attention_mask": [[1] * len(block) for block in blocks]})


def build(model_args: ModelArguments, data_args: DataArguments) -> tuple:
    text = open(data_args.train_file, encoding="utf-8").read()
    cut = int(len(text) * (1 - data_args.validation_fraction))
    if model_args.tokenizer_name_or_path is None:
        logger.warning("Training a WordPiece vocabulary of %d tokens; its training is not deterministic across "
                       "processes (huggingface/tokenizers#1794): to reproduce this run, pass "
                       "--tokenizer_name_or_path <a stage of it>.", model_args.vocab_size)  # fmt: skip
        tokenizer = wordpiece_tokenizer(text[:cut], model_args.vocab_size)
    else:
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name_or_path)
    tokenizer.model_max_length = data_args.block_size  # the model's positions stop there; saved with every stage
    splits = DatasetDict(
        train=blocks_of(text[:cut], tokenizer, data_args.block_size, data_args.max_train_blocks),
        validation=blocks_of(text[cut:], tokenizer, data_args.block_size, data_args.max_eval_blocks),
    )
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=model_args.hidden_size, num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads, intermediate_size=4 * model_args.hidden_size,
        max_position_embeddings=data_args.block_size, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return BertForMaskedLM(config), tokenizer, splits


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, trgl_args, training_args = parse(
        (ModelArguments, DataArguments, TRGLArguments, TRGLTrainingArguments), argv
    )
    setup_logging(training_args)
    set_seed(training_args.seed)
    base, tokenizer, splits = build(model_args, data_args)
    model = TRGLModel.from_base(base, trgl_args.to_config())
    logger.info("Cut %s into %d modules (layers per module: %s).", type(base).__name__, model.num_modules,
                model.config.split)  # fmt: skip
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=data_args.mlm_probability)
    trainer = TRGLTrainer(model=model, args=training_args, train_dataset=splits["train"],
                          eval_dataset=splits["validation"], processing_class=tokenizer,
                          data_collator=collator)  # fmt: skip
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = {"eval": trainer.evaluate()}
    write_results(trainer, metrics, "perplexity")
    return metrics


if __name__ == "__main__":
    main()
