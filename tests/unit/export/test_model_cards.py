"""Model cards say the truth per task: Auto class, pipeline tag, metrics, dataset; the run's card has the plot."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

import pytest
from datasets import Dataset

from trgl_hf.export.model_cards import module_plot_svg, stage_model_card
from trgl_hf.training.run_outputs import dataset_name

FACTS = {"stage": 2, "num_stages": 3, "trgl_mode": "sequential", "taus": [5.0, 10.0, 10.0], "use_transport": True,
         "has_processor": True, "remote_code": False}  # fmt: skip


@pytest.mark.parametrize(
    ("architecture", "task", "metrics", "loader", "tag"),
    [
        ("BertForSequenceClassification", "single_label_classification", {"accuracy": 0.8, "loss": 0.4},
         "AutoModelForSequenceClassification", "text-classification"),
        ("GPT2LMHeadModel", "causal_lm", {"perplexity": 12.5, "loss": 2.5}, "AutoModelForCausalLM", "text-generation"),
        ("LlamaForCausalLM", "causal_lm", {}, "AutoModelForCausalLM", "text-generation"),
        ("DistilBertForSequenceClassification", "regression", {"mse": 0.1}, "AutoModelForSequenceClassification",
         "text-classification"),
        ("ViTForImageClassification", "multi_label_classification", {"f1": 0.5, "exact_match": 0.25},
         "AutoModelForImageClassification", "image-classification"),
    ],
)  # fmt: skip
def test_stage_card_per_task(architecture, task, metrics, loader, tag):
    facts = {**FACTS, "architecture": architecture, "task": task, "metrics": metrics, "dataset": "stanfordnlp/sst2",
             "base_model": "org/base", "module_metrics": {"1": metrics, "2": metrics}}  # fmt: skip
    card = stage_model_card(facts, "user/repo", revision="stage-02")
    data = card.data.to_dict()
    assert data["pipeline_tag"] == tag and data["library_name"] == "transformers"
    assert data["base_model"] == "org/base" and data["datasets"] == ["stanfordnlp/sst2"]
    assert data["metrics"] == (sorted(metrics) or [{"causal_lm": "perplexity"}.get(task, "accuracy")])
    assert "accuracy" not in data["metrics"] or task == "single_label_classification"
    assert "trgl" in data["tags"] and "stage-02" in data["tags"]
    text = str(card)
    assert f'model = {loader}.from_pretrained("user/repo", revision="stage-02")' in text
    assert f'predict = pipeline("{tag}", model="user/repo", revision="stage-02")' in text
    results = data.get("model-index", [{}])[0].get("results", [])
    assert {metric["type"] for result in results for metric in result["metrics"]} == set(metrics)


def test_subfolder_and_processor_free_cards():
    facts = {**FACTS, "architecture": "ViTForImageClassification", "task": "single_label_classification",
             "has_processor": False, "metrics": {}}  # fmt: skip
    text = str(stage_model_card(facts, "user/repo", subfolder="stages/stage-02"))
    assert 'from_pretrained("user/repo", subfolder="stages/stage-02")' in text
    assert "this stage has none" in text and "image_processor=..." in text and "predict = pipeline" not in text
    assert "base_model" not in text and "datasets:" not in text  # unknown facts are left out, not invented


def test_dataset_names_that_are_file_formats_are_not_dataset_names(tmp_path):
    Dataset.from_dict({"x": [1, 2]}).to_parquet(tmp_path / "train.parquet")
    from datasets import load_dataset

    assert dataset_name(load_dataset("parquet", data_files=str(tmp_path / "train.parquet"))["train"]) is None
    assert dataset_name(Dataset.from_dict({"x": [1]})) is None
    named = Dataset.from_dict({"x": [1]})
    named.info.dataset_name = "stanfordnlp/sst2"
    assert dataset_name(named) == "stanfordnlp/sst2"


def test_plot_is_valid_svg_with_one_point_per_module():
    svg = module_plot_svg({"1": {"accuracy": 0.5}, "2": {"accuracy": 0.75}, "3": {"accuracy": None}}, "accuracy", "t")
    root = ElementTree.fromstring(svg)
    circles = root.findall(".//{http://www.w3.org/2000/svg}circle")
    assert len(circles) == 2  # the non-finite module is not drawn
    assert module_plot_svg({"1": {"loss": 1.0}}, "accuracy", "t") is None
