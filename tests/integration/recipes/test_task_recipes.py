"""The masked-LM pretraining and token-classification recipes run end to end (small variants), single- and
multi-process, and their stages work in `pipeline()` with no extra argument."""

import codecs
import math
import os
import subprocess
import sys
import this
from pathlib import Path

import pytest
from transformers import pipeline

RECIPES = Path(__file__).resolve().parents[3] / "recipes"
CONLL = Path(__file__).resolve().parents[2] / "data" / "conll_coriolanus.txt"
sys.path.insert(0, str(RECIPES))

COMMON = ["--report_to", "none", "--save_strategy", "no", "--use_cpu", "true", "--seed", "0",
          "--disable_tqdm", "true"]  # fmt: skip
ZEN = codecs.decode(this.s, "rot13")  # real text: the Zen of Python


def mlm_arguments(tmp_path: Path) -> list[str]:
    text = tmp_path / "zen.txt"
    text.write_text(ZEN * 8)
    return ["--train_file", str(text), "--hidden_size", "16", "--num_hidden_layers", "2", "--num_attention_heads",
            "2", "--vocab_size", "120", "--block_size", "16", "--validation_fraction", "0.2", "--num_modules", "2",
            "--trgl_mode", "sequential", "--max_steps", "4", "--per_device_train_batch_size", "8",
            "--learning_rate", "0.01", "--output_dir", str(tmp_path / "out"), *COMMON]  # fmt: skip


def test_mlm_recipe_pretrains_every_module_and_its_stages_fill_a_mask(tmp_path):
    import pretrain_mlm

    metrics = pretrain_mlm.main(mlm_arguments(tmp_path))["eval"]
    for module in (1, 2):
        assert math.isfinite(metrics[f"eval_module_{module}_perplexity"]) and metrics[f"eval_module_{module}_loss"] > 0
    fill = pipeline("fill-mask", model=str(tmp_path / "out" / "stage-01"))
    candidates = fill("beautiful is [MASK].")  # within the model's 16 positions
    assert len(candidates) == 5 and all(candidate["token_str"] for candidate in candidates)
    assert candidates[0]["score"] >= candidates[-1]["score"]


def test_mlm_recipe_reuses_a_saved_tokenizer_instead_of_training_one(tmp_path):
    import pretrain_mlm

    text = tmp_path / "zen.txt"
    text.write_text(ZEN * 8)
    data_args = pretrain_mlm.DataArguments(train_file=str(text), block_size=16)
    _, trained, splits = pretrain_mlm.build(pretrain_mlm.ModelArguments(vocab_size=120), data_args)
    trained.save_pretrained(tmp_path / "tokenizer")
    reused_args = pretrain_mlm.ModelArguments(vocab_size=7, tokenizer_name_or_path=str(tmp_path / "tokenizer"))
    model, reused, reused_splits = pretrain_mlm.build(reused_args, data_args)
    assert reused.get_vocab() == trained.get_vocab() and model.config.vocab_size == len(trained)
    assert reused_splits["train"]["input_ids"] == splits["train"]["input_ids"]
    assert reused.model_max_length == 16


def test_token_classification_recipe_tags_entities_and_its_stages_run_in_a_pipeline(tmp_path):
    import train_token_classification

    arguments = ["--train_file", str(CONLL), "--validation_file", str(CONLL), "--hidden_size", "32",
                 "--num_hidden_layers", "2", "--num_modules", "2", "--trgl_mode", "sequential", "--max_steps", "40",
                 "--per_device_train_batch_size", "8", "--learning_rate", "0.01", "--output_dir",
                 str(tmp_path / "out"), *COMMON]  # fmt: skip
    metrics = train_token_classification.main(arguments)["eval"]
    assert metrics["eval_module_2_accuracy"] > 0.8  # most tokens are O; entities are learned on the training file
    assert 0.0 <= metrics["eval_module_2_f1"] <= 1.0 and "eval_module_1_precision" in metrics
    tagger = pipeline("token-classification", model=str(tmp_path / "out" / "stage-02"))
    tags = tagger("Caius Marcius is chief enemy to the people .")
    assert tags and {"entity", "score", "word", "start", "end"} <= set(tags[0])
    assert all(tag["entity"] in {"B-PER", "I-PER", "B-LOC"} for tag in tags)


def test_a_words_tag_goes_on_its_first_sub_token_and_special_tokens_are_ignored():
    from pretrain_mlm import wordpiece_tokenizer
    from train_token_classification import DataArguments, aligned

    tokenizer = wordpiece_tokenizer(ZEN, vocab_size=60)  # a small vocabulary: long words split into sub-tokens
    sentences = {"tokens": [["Readability", "counts", "Rome"]], "tags": [["O", "O", "B-LOC"]]}
    tag_ids = {"O": 0, "B-LOC": 1}
    first_only = aligned(sentences, tokenizer, tag_ids, DataArguments(train_file="unused"))[0]
    every = aligned(sentences, tokenizer, tag_ids, DataArguments(train_file="unused", label_all_tokens=True))[0]
    word_ids = tokenizer(sentences["tokens"], is_split_into_words=True).word_ids(0)
    assert len(word_ids) > 5  # [CLS] + several sub-tokens per word + [SEP]
    expected_first, expected_every, previous = [], [], None
    for word in word_ids:
        tag = None if word is None else tag_ids[sentences["tags"][0][word]]
        expected_first.append(tag if word is not None and word != previous else -100)
        expected_every.append(-100 if tag is None else tag)
        previous = word
    assert first_only["labels"] == expected_first and every["labels"] == expected_every
    with pytest.raises(ValueError, match=r"Tags \['B-XYZ'\] are not in the training file's tags"):
        aligned({"tokens": [["a"]], "tags": [["B-XYZ"]]}, tokenizer, tag_ids, DataArguments(train_file="unused"))


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("recipe", ["pretrain_mlm", "train_token_classification"])
def test_task_recipes_run_under_accelerate_launch_with_two_processes(recipe, tmp_path):
    if recipe == "pretrain_mlm":
        arguments = mlm_arguments(tmp_path)
    else:
        arguments = ["--train_file", str(CONLL), "--validation_file", str(CONLL), "--hidden_size", "16",
                     "--num_hidden_layers", "2", "--num_modules", "2", "--max_steps", "4", "--output_dir",
                     str(tmp_path / "out"), *COMMON]  # fmt: skip
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--main_process_port", "0", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(launcher + [str(RECIPES / f"{recipe}.py"), *arguments], cwd=RECIPES.parent, env=env,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "stage-02" / "model.safetensors").is_file()
