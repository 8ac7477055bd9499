"""The recipes run end to end (small variants), from the CLI or a YAML file, single- and multi-process."""

import codecs
import json
import os
import subprocess
import sys
import this
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
sys.path.insert(0, str(RECIPES))

COMMON = ["--report_to", "none", "--save_strategy", "no", "--use_cpu", "true", "--seed", "0",
          "--disable_tqdm", "true"]  # fmt: skip


def test_image_recipe_from_yaml_writes_stages_metrics_and_plot(tmp_path):
    import train_image_classification

    config = tmp_path / "run.yaml"
    config.write_text(
        f"dataset_name: digits\nmodel_type: cifar_resnet\ndepth: 8\nnum_modules: 3\ntrgl_mode: sequential\n"
        f"num_train_epochs: 2\nper_device_train_batch_size: 64\nlearning_rate: 0.05\noptim: sgd\n"
        f"head_pool_size: 1\noutput_dir: {tmp_path / 'out'}\nreport_to: none\nsave_strategy: 'no'\nuse_cpu: true\n"
    )
    metrics = train_image_classification.main([str(config)])
    assert metrics["test"]["test_module_3_accuracy"] > 0.5
    written = json.loads((tmp_path / "out" / "module_metrics.json").read_text())
    assert len(written["per_module"]["test"]) == 3
    assert (tmp_path / "out" / "module_accuracy.png").stat().st_size > 1000
    assert all((tmp_path / "out" / f"stage-0{k}" / "model.safetensors").exists() for k in (1, 2, 3))


def test_causal_lm_recipe_reports_perplexity(tmp_path):
    import train_causal_lm

    text = tmp_path / "zen.txt"
    text.write_text(codecs.decode(this.s, "rot13") * 3)
    metrics = train_causal_lm.main([
        "--train_file", str(text), "--block_size", "32", "--hidden_size", "32", "--num_hidden_layers", "2",
        "--num_modules", "2", "--model_type", "llama", "--trgl_mode", "multilap", "--max_steps", "20",
        "--learning_rate", "0.003", "--validation_fraction", "0.2", "--test_fraction", "0.2",
        "--output_dir", str(tmp_path / "out"), *COMMON,
    ])  # fmt: skip
    assert metrics["test"]["test_module_2_perplexity"] < 30  # the character vocabulary is larger
    assert (tmp_path / "out" / "module_perplexity.png").exists()


def test_text_recipe_on_a_local_model_and_parquet_folder(tmp_path):
    import tokenizers
    import train_text_classification
    from datasets import ClassLabel, Dataset, Features, Value
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    words = ["good", "great", "fine", "bad", "awful", "poor", "movie", "plot", "the", "a"]
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate(words)}}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")
    model_dir = tmp_path / "model"
    tokenizer.save_pretrained(model_dir)
    BertForSequenceClassification(
        BertConfig(
            vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
        )
    ).save_pretrained(model_dir)
    generator = torch.Generator().manual_seed(0)
    features = Features({"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"])})
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for split, size in (("train", 256), ("validation", 64), ("test", 64)):
        labels = torch.randint(0, 2, (size,), generator=generator).tolist()
        sentences = [
            f"the movie was {words[int(torch.randint(0, 3, (1,), generator=generator)) + 3 * (1 - y)]}" for y in labels
        ]
        Dataset.from_dict({"sentence": sentences, "label": labels}, features=features).to_parquet(
            data_dir / f"{split}.parquet"
        )
    metrics = train_text_classification.main([
        "--model_name_or_path", str(model_dir), "--dataset_name", str(data_dir), "--num_modules", "2",
        "--trgl_mode", "sequential", "--num_train_epochs", "3", "--learning_rate", "0.01",
        "--per_device_train_batch_size", "16", "--output_dir", str(tmp_path / "out"), *COMMON,
    ])  # fmt: skip
    assert metrics["test"]["test_module_2_accuracy"] > 0.9


@pytest.mark.multiprocess
@pytest.mark.parametrize("mode", ["parallel", "sequential", "multilap"])
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(mode, tmp_path):
    args = ["recipes/train_image_classification.py", "--dataset_name", "digits", "--model_type", "vit",
            "--patch_size", "2", "--hidden_size", "16", "--num_hidden_layers", "2", "--num_modules", "2",
            "--trgl_mode", mode, "--max_steps", "4", "--learning_rate", "0.1", "--optim", "sgd",
            "--max_grad_norm", "1.0", "--dataloader_drop_last", "true", "--eval_strategy", "no", *COMMON]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    root = RECIPES.parent
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    two = subprocess.run(
        launcher
        + args
        + [
            "--output_dir",
            str(tmp_path / "two"),
            "--per_device_train_batch_size",
            "4",
            "--gradient_accumulation_steps",
            "2",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable] + args + ["--output_dir", str(tmp_path / "one"),
                                                    "--per_device_train_batch_size", "16"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    for stage in ("stage-01", "stage-02"):
        single, distributed = (load_file(tmp_path / run / stage / "model.safetensors") for run in ("one", "two"))
        assert single.keys() == distributed.keys()
        for name in single:
            torch.testing.assert_close(distributed[name], single[name], rtol=0, atol=1e-5, msg=name)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_bf16_mixed_precision_trains_every_mode_step(tmp_path):
    # Accelerate's precision is process-wide, so bf16 runs in its own process.
    args = [sys.executable, "recipes/train_image_classification.py", "--dataset_name", "digits", "--model_type",
            "cifar_resnet", "--depth", "8", "--num_modules", "3", "--head_pool_size", "1", "--trgl_mode",
            "sequential", "--num_train_epochs", "1", "--learning_rate", "0.05", "--optim", "sgd", "--bf16", "true",
            "--per_device_train_batch_size", "64", "--output_dir", str(tmp_path), *COMMON]  # fmt: skip
    result = subprocess.run(args, cwd=RECIPES.parent, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "module_metrics.json").read_text())
    assert min(metrics["per_module"]["test"]) > 0.2  # chance is 0.1
