"""Model cards say the truth per task: Auto class, pipeline tag, metrics, dataset; the run's card has the plot."""

from __future__ import annotations

from huggingface_hub import ModelCard

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments


def test_run_card_summarises_the_run(tmp_path, make_cifar_resnet, digits):
    model = TRGLModel.from_base(make_cifar_resnet(num_labels=10, num_channels=1, depths=(1, 1, 1)),
                                TRGLConfig(num_modules=3))  # fmt: skip
    args = TRGLTrainingArguments(output_dir=str(tmp_path / "run"), trgl_mode="sequential", max_steps=2,
                                 use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
                                 trgl_dataset_name="sklearn/digits")  # fmt: skip
    trainer = TRGLTrainer(model=model, args=args, train_dataset=digits["train"].select(range(64)),
                          eval_dataset=digits["validation"].select(range(32)))  # fmt: skip
    trainer.train()
    card = ModelCard.load(tmp_path / "run" / "README.md")
    assert card.data.to_dict()["datasets"] == ["sklearn/digits"]
    text = str(card)
    assert "![accuracy per module](module_metrics.svg)" in text and (tmp_path / "run" / "module_metrics.svg").is_file()
    for stage in (1, 2, 3):
        assert f"| {stage} | {trainer.stage_metrics[stage]['accuracy']:.4f} |" in text
        assert f"stage-0{stage}" in text
    assert "optimisation steps, all phases: 6" in text
    stage_card = ModelCard.load(tmp_path / "run" / "stage-02" / "README.md")
    assert stage_card.data.to_dict()["datasets"] == ["sklearn/digits"]
