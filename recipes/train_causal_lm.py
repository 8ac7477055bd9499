"""Train a GPT-2 / Llama-like decoder module-wise with TRGL on a text file, grouped into fixed-length blocks.

    python recipes/train_causal_lm.py recipes/configs/gpt2_shakespeare_small.yaml

From scratch (`--model_type gpt2|llama`, character-level vocabulary built from the training text) or from
`--model_name_or_path` (its own tokenizer). Reports loss and perplexity per module. The tokenizer is saved in every
stage, so `pipeline("text-generation", model=stage_dir)` continues a prompt. The character tokenizer
(`char_tokenizer`) has one id per character of the text (in sorted order) plus `<|endoftext|>` (bos, eos, pad and
unknown characters, like GPT-2's), and decodes back to the exact text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common import TRGLArguments, logger, parse, setup_logging, write_results
from datasets import Dataset, DatasetDict
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    set_seed,
)

from trgl_hf import TRGLModel, TRGLTrainer, TRGLTrainingArguments


@dataclass
class ModelArguments:
    """Which decoder: a Hub id / local path, or a small one built from a config."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "Hub id or local path."})
    model_type: str = field(default="gpt2", metadata={"help": "From scratch: gpt2 or llama."})
    hidden_size: int = field(default=128, metadata={"help": "Hidden size of a model built from scratch."})
    num_hidden_layers: int = field(default=4, metadata={"help": "Depth of a model built from scratch."})


@dataclass
class DataArguments:
    """Which text and how to cut it."""

    train_file: str = field(metadata={"help": "Plain text file."})
    block_size: int = field(default=128, metadata={"help": "Tokens per training example."})
    validation_fraction: float = field(default=0.05, metadata={"help": "Tail of the text used for validation."})
    test_fraction: float = field(default=0.05, metadata={"help": "Tail of the text used for test."})
    max_train_blocks: int | None = field(default=None, metadata={"help": "Keep the first N training blocks."})
    max_eval_blocks: int | None = field(default=None, metadata={"help": "Keep the first N evaluation blocks."})


END_OF_TEXT = "<|endoftext|>"


def char_tokenizer(text: str) -> PreTrainedTokenizerFast:
    """A character-level tokenizer for `text`: character c has id `sorted(set(text)).index(c)`, then `<|endoftext|>`
    (bos, eos, pad, and what a character outside the vocabulary becomes). Every character is one token (spaces and
    newlines too), nothing is added on encode and decoding concatenates, so `decode(encode(s)) == s` for any `s` made
    of the text's characters."""
    vocabulary = {character: i for i, character in enumerate(sorted(set(text)))}
    backend = Tokenizer(models.WordLevel({**vocabulary, END_OF_TEXT: len(vocabulary)}, unk_token=END_OF_TEXT))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character alone
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT,
        unk_token=END_OF_TEXT, clean_up_tokenization_spaces=False,
    )  # fmt: skip


def build(model_args: ModelArguments, data_args: DataArguments):
    text = open(data_args.train_file, encoding="utf-8").read()
    cut_test = int(len(text) * (1 - data_args.test_fraction))
    cut_validation = int(len(text) * (1 - data_args.test_fraction - data_args.validation_fraction))
    parts = {"train": text[:cut_validation], "validation": text[cut_validation:cut_test], "test": text[cut_test:]}
    if model_args.model_name_or_path:
        tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
        model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)
        encode_options = {}
    else:
        tokenizer = char_tokenizer(text)
        encode_options = {"split_special_tokens": True}  # a literal "<|endoftext|>" in the text stays characters
        size, layers, special = model_args.hidden_size, model_args.num_hidden_layers, tokenizer.eos_token_id
        if model_args.model_type == "gpt2":
            config = GPT2Config(vocab_size=len(tokenizer), n_embd=size, n_layer=layers, n_head=4,
                                n_positions=data_args.block_size, bos_token_id=special, eos_token_id=special,
                                pad_token_id=special, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
            model = GPT2LMHeadModel(config)
            model.generation_config.max_length = data_args.block_size  # learned positions end there
        else:
            config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=size, num_hidden_layers=layers,
                                 num_attention_heads=4, num_key_value_heads=2, intermediate_size=2 * size,
                                 max_position_embeddings=data_args.block_size, bos_token_id=special,
                                 eos_token_id=special, pad_token_id=special)  # fmt: skip
            model = LlamaForCausalLM(config)
    splits = {}
    for name, part in parts.items():
        ids = tokenizer(part, verbose=False, **encode_options)["input_ids"]
        blocks = [
            ids[i : i + data_args.block_size] for i in range(0, len(ids) - data_args.block_size, data_args.block_size)
        ]
        limit = data_args.max_train_blocks if name == "train" else data_args.max_eval_blocks
        blocks = blocks[:limit] if limit else blocks
        splits[name] = Dataset.from_dict({"input_ids": blocks, "labels": blocks}).with_format("torch")
    return model, tokenizer, DatasetDict(splits)


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
    trainer = TRGLTrainer(model=model, args=training_args, train_dataset=splits["train"],
                          eval_dataset=splits["validation"], processing_class=tokenizer)  # fmt: skip
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = {"eval": trainer.evaluate(), "test": trainer.evaluate(splits["test"], metric_key_prefix="test")}
    write_results(trainer, metrics, "perplexity")
    return metrics


if __name__ == "__main__":
    main()
