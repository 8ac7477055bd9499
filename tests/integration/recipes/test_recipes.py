"""The recipes run end to end (small variants), from the CLI or a YAML file, single- and multi-process."""

import codecs
import json
import os
import subprocess
import sys
import this
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

RECIPES = Path(__file__).resolve().parents[3] / "recipes"
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

    # The stage names the digits and holds the image processor: a digit picture through `pipeline()` gets the logits
    # the stage gives on the recipe's own validation pixels.
    from common import digits_image, digits_intensities
    from sklearn.datasets import load_digits
    from transformers import AutoModelForImageClassification, pipeline

    from trgl_hf import load_digits_dataset

    stage = tmp_path / "out" / "stage-03"
    assert json.loads((stage / "config.json").read_text())["id2label"] == {str(i): str(i) for i in range(10)}
    assert (stage / "preprocessor_config.json").exists()
    seed = 42  # the training arguments' default: the run's digits split
    splits, names, _ = train_image_classification.load_splits(train_image_classification.DataArguments(), None, seed)
    library = load_digits_dataset(seed=seed)
    train = np.asarray(library["train"].with_format("numpy")["pixel_values"])
    validation = np.asarray(library["validation"].with_format("numpy")["pixel_values"][:4])
    intensities = digits_intensities(validation, train.min(), train.max())[:, 0]
    raw_digits = load_digits().images
    assert all((raw_digits == digit).all(axis=(1, 2)).any() for digit in intensities)  # real scikit-learn digits
    classifier = pipeline("image-classification", model=str(stage))
    model = AutoModelForImageClassification.from_pretrained(stage).eval()
    for i, digit in enumerate(intensities):
        with torch.no_grad():  # one image at a time, as the pipeline runs it
            expected = model(pixel_values=splits["validation"][i]["pixel_values"][None]).logits[0]
        answers = classifier(digits_image(digit), top_k=10, function_to_apply="none")
        by_name = {answer["label"]: answer["score"] for answer in answers}
        assert sorted(by_name) == names
        got = torch.tensor([by_name[name] for name in names])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


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

    from transformers import AutoConfig, AutoTokenizer, pipeline

    stage = tmp_path / "out" / "stage-02"
    tokenizer = AutoTokenizer.from_pretrained(stage)
    vocabulary = sorted(set(text.read_text()))
    config = AutoConfig.from_pretrained(stage)
    assert config.vocab_size == len(tokenizer) == len(vocabulary) + 1
    assert config.eos_token_id == config.pad_token_id == tokenizer.eos_token_id == len(vocabulary)
    passage = text.read_text()[:200]
    assert tokenizer(passage)["input_ids"] == [vocabulary.index(c) for c in passage]
    assert tokenizer.decode(tokenizer(passage)["input_ids"]) == passage
    prompt = "Beautiful is better"
    generated = pipeline("text-generation", model=str(stage))(prompt)[0]["generated_text"]
    assert generated.startswith(prompt) and len(generated) > len(prompt)
    assert set(generated) <= set(vocabulary)  # the continuation decodes to characters of the text


def test_char_tokenizer_round_trips_text_and_keeps_the_vocabulary_index():
    from train_causal_lm import END_OF_TEXT, char_tokenizer

    text = (
        "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\tSpeak, speak!  (aside) 'tis -- so?\n"
    )
    vocabulary = sorted(set(text))
    tokenizer = char_tokenizer(text)
    ids = tokenizer(text)["input_ids"]
    assert ids == [vocabulary.index(c) for c in text]  # one id per character, spaces and newlines too, nothing added
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(tokenizer(" , . \n ")["input_ids"]) == " , . \n "  # no clean-up of spaces
    assert len(tokenizer) == len(vocabulary) + 1
    assert tokenizer.convert_ids_to_tokens(len(vocabulary)) == END_OF_TEXT
    assert tokenizer.eos_token_id == tokenizer.bos_token_id == tokenizer.pad_token_id == len(vocabulary)
    assert tokenizer("s#p")["input_ids"] == [vocabulary.index("s"), len(vocabulary), vocabulary.index("p")]  # unknown
    assert tokenizer.decode(tokenizer("a" + END_OF_TEXT)["input_ids"], skip_special_tokens=True) == "a"


def tiny_text_model_and_data(tmp_path):
    """A 2-layer BERT with a word-level tokenizer, and SST-2-style parquet files (`ClassLabel` negative/positive)."""
    import tokenizers
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
    return model_dir, data_dir


def test_text_recipe_on_a_local_model_and_parquet_folder(tmp_path):
    import train_text_classification
    from transformers import pipeline

    model_dir, data_dir = tiny_text_model_and_data(tmp_path)
    metrics = train_text_classification.main(
        [
            "--model_name_or_path",
            str(model_dir),
            "--dataset_name",
            str(data_dir),
            "--num_modules",
            "2",
            "--trgl_mode",
            "sequential",
            "--num_train_epochs",
            "3",
            "--learning_rate",
            "0.01",
            "--per_device_train_batch_size",
            "16",
            "--output_dir",
            str(tmp_path / "out"),
            "--tau",
            "10",
            *COMMON,
        ]
    )  # fmt: skip  (its weights are random: the paper's tau, not the defaults for pretrained encoders)
    assert metrics["test"]["test_module_2_accuracy"] > 0.9
    stage = tmp_path / "out" / "stage-02"
    config = json.loads((stage / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}
    classifier = pipeline("text-classification", model=str(stage))
    assert classifier("the movie was great")[0]["label"] == "positive"
    assert classifier("the movie was awful")[0]["label"] == "negative"


def test_class_names_come_from_the_class_label_or_the_option(tmp_path):
    import train_text_classification
    from common import class_names
    from datasets import ClassLabel, Dataset, Features, Value

    labelled = Dataset.from_dict({"label": [0, 1, 2]}, features=Features({"label": ClassLabel(names=["a", "b", "c"])}))
    assert class_names(labelled, "label", None) == ["a", "b", "c"]
    assert class_names(labelled, "label", "x, y,z") == ["x", "y", "z"]
    plain = Dataset.from_dict({"label": [0, 1, 1]}, features=Features({"label": Value("int64")}))
    assert class_names(plain, "label", "no,yes") == ["no", "yes"]
    for dataset, option in (
        (labelled, "x,y"),
        (labelled, "x,y,z,w"),
        (plain, "no"),
        (plain, None),
        (labelled, "x,x,y"),
    ):
        with pytest.raises(ValueError, match="--class_names"):
            class_names(dataset, "label", option)
    model_dir, data_dir = tiny_text_model_and_data(tmp_path)
    with pytest.raises(ValueError, match=r"`--class_names` gives 3 names .* has 2 classes \(negative, positive\)"):
        train_text_classification.main([
            "--model_name_or_path", str(model_dir), "--dataset_name", str(data_dir), "--class_names", "bad,ok,good",
            "--output_dir", str(tmp_path / "out"), *COMMON,
        ])  # fmt: skip


def test_digits_processor_maps_a_digit_picture_to_the_library_pixels():
    from common import DIGITS_PIXEL_SCALE, digits_for_pipeline, digits_image, digits_intensities
    from sklearn.datasets import load_digits

    from trgl_hf import load_digits_dataset

    library = load_digits_dataset(seed=3)
    splits, processor = digits_for_pipeline(library)
    train = np.asarray(library["train"].with_format("numpy")["pixel_values"])
    exact = 0 if processor.backend == "pil" else 1e-6  # torchvision fuses rescaling and normalisation
    raw_digits = load_digits().images
    for name in ("train", "validation", "test"):
        pixels = np.asarray(library[name].with_format("numpy")["pixel_values"])
        intensities = digits_intensities(pixels, train.min(), train.max())[:, 0]
        assert all((raw_digits == digit).all(axis=(1, 2)).any() for digit in intensities[:20])
        picture = digits_image(intensities[0])
        assert picture.mode == "L" and np.asarray(picture).max() <= 16 * DIGITS_PIXEL_SCALE
        rgb = processor(picture.convert("RGB"), return_tensors="pt")["pixel_values"][0]
        assert rgb.shape == (3, 8, 8)
        torch.testing.assert_close(rgb, torch.from_numpy(pixels[0]).expand(3, -1, -1), rtol=0, atol=exact)
        torch.testing.assert_close(splits[name][0]["pixel_values"], rgb, rtol=0, atol=0)
        assert list(splits[name].with_format(None)["labels"]) == list(library[name].with_format(None)["labels"])
    assert splits["train"].features["labels"].names == [str(d) for d in range(10)]


SLOW = pytest.mark.slow


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    "mode", ["parallel", pytest.param("sequential", marks=SLOW), pytest.param("multilap", marks=SLOW)]
)  # one mode in the default suite (~1 min each); the others with -m slow
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(mode, tmp_path):
    args = ["recipes/train_image_classification.py", "--dataset_name", "digits", "--model_type", "vit",
            "--patch_size", "2", "--hidden_size", "16", "--num_hidden_layers", "2", "--num_modules", "2",
            "--trgl_mode", mode, "--max_steps", "4", "--learning_rate", "0.1", "--optim", "sgd",
            "--max_grad_norm", "1.0", "--dataloader_drop_last", "true", "--eval_strategy", "no", *COMMON]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    root = RECIPES.parent
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--main_process_port", "0", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no"]  # fmt: skip
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
            "sequential", "--num_train_epochs", "2", "--learning_rate", "0.05", "--optim", "sgd", "--bf16", "true",
            "--per_device_train_batch_size", "64", "--output_dir", str(tmp_path), "--class_names",
            "zero,one,two,three,four,five,six,seven,eight,nine", *COMMON]  # fmt: skip
    result = subprocess.run(args, cwd=RECIPES.parent, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "module_metrics.json").read_text())
    assert min(metrics["per_module"]["test"]) > 0.3  # chance is 0.1 (1 epoch left module 1 near it for some inits)
    names = "zero one two three four five six seven eight nine".split()
    id2label = json.loads((tmp_path / "stage-03" / "config.json").read_text())["id2label"]
    assert id2label == {str(i): name for i, name in enumerate(names)}  # --class_names wins over "0" .. "9"
