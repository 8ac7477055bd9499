"""Model cards: one per stage (what it is, its task's metrics, the run's per-module table, how to load and run it),
and one for the whole run (`output_dir/README.md`, with the per-module plot).

Everything a card says comes from the stage's `trgl_stage.json` (or the trainer's run facts), so the same card is
written locally and regenerated for the Hub with the repository, branch or subfolder a user loads it from.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..modeling.tasks import get_task, stage_loader
from .stage_folders import read_stage_metadata, stage_dirname

PAPER_URL = "https://arxiv.org/abs/2309.17357"
TAGS = ["trgl", "greedy-module-wise-training", "trgl_hf"]
PLOT_FILE = "module_metrics.svg"

# What a pipeline of each tag is called on in the card's snippet (image inputs are left to the reader).
_PIPELINE_CALLS = {
    "text-classification": 'predict("A touching, funny and beautifully made film.")',
    "text-generation": 'predict("Once upon a time", max_new_tokens=20)',
    "image-classification": 'predict("path/to/image.png")',
    "token-classification": 'predict("My name is Wolfgang and I live in Berlin.")',
    "fill-mask": 'predict(f"Paris is the {predict.tokenizer.mask_token} of France.")',
}
# The files that make a processor loadable (any of them).
PROCESSOR_FILES = ("tokenizer_config.json", "preprocessor_config.json", "processor_config.json")


def stage_card_facts(folder: str | Path) -> dict[str, Any]:
    """What [`stage_model_card`] needs from a saved stage folder: its `trgl_stage.json`, its class, whether it needs
    remote code and whether a processor (tokenizer / image processor) was saved with it."""
    folder = Path(folder)
    facts = read_stage_metadata(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    facts["architecture"] = (config.get("architectures") or [None])[0]
    facts["remote_code"] = bool(config.get("auto_map"))
    facts["has_processor"] = any((folder / name).is_file() for name in PROCESSOR_FILES)
    return facts


def format_value(value: Any) -> str:
    """A metric value as the cards print it (`not finite` for what JSON could not hold)."""
    return f"{value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else "not finite"


def module_table(module_metrics: dict[Any, dict[str, Any]]) -> str:
    """Markdown table of the evaluation metrics of every finished module (rows by module, columns by metric)."""
    rows = {int(stage): metrics for stage, metrics in module_metrics.items() if metrics}
    if not rows:
        return ""
    names = sorted({name for metrics in rows.values() for name in metrics})
    lines = ["| module | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for stage, metrics in sorted(rows.items()):
        values = [format_value(metrics[n]) if n in metrics else "" for n in names]
        lines.append(f"| {stage} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def load_arguments(location: str, revision: str | None, subfolder: str | None, remote_code: bool) -> str:
    """The arguments of `from_pretrained` / `pipeline(model=...)` that load a stage from `location`."""
    arguments = [json.dumps(location)]
    if revision:
        arguments.append(f"revision={json.dumps(revision)}")
    if subfolder:
        arguments.append(f"subfolder={json.dumps(subfolder)}")
    if remote_code:
        arguments.append("trust_remote_code=True")
    return ", ".join(arguments)


def stage_model_card(
    facts: dict[str, Any],
    location: str,
    *,
    revision: str | None = None,
    subfolder: str | None = None,
) -> ModelCard:
    """Model card of one stage, for the task it was trained on.

    Args:
        facts (`dict`): the stage's `trgl_stage.json` plus `architecture`, `remote_code` and `has_processor` (see
            [`stage_card_facts`]).
        location (`str`): where users load it from: the local folder, or the Hub repository id.
        revision (`str`, *optional*): the Hub branch that holds it (`"branch"` layout).
        subfolder (`str`, *optional*): the folder of `main` that holds it (`"subfolder"` layout).

    Returns:
        `ModelCard`: metadata (`library_name`, `pipeline_tag`, `base_model`, `datasets`, `metrics`, tags, results)
        and a body with the stage's metrics, the run's per-module table, and load and pipeline snippets.
    """
    loader, pipeline_tag = stage_loader(facts.get("architecture"))
    card_data = _stage_card_data(facts, pipeline_tag, _card_model_name(location, revision, subfolder))
    arguments = load_arguments(location, revision, subfolder, bool(facts.get("remote_code")))
    body = f"""---
{card_data.to_yaml()}
---

{_stage_summary(facts)}
## Load it

```python
from transformers import {loader}

model = {loader}.from_pretrained({arguments})
```

{_pipeline_section(pipeline_tag, arguments, bool(facts.get("has_processor")), subfolder is not None)}
{_adapter_section(facts.get("peft_adapter"), location, revision, subfolder)}"""
    return ModelCard(body)


def _card_model_name(location: str, revision: str | None, subfolder: str | None) -> str:
    """The name a card's evaluation results are filed under: the location, with its revision or subfolder."""
    return f"{location}@{revision}" if revision else f"{location}/{subfolder}" if subfolder else location


def _stage_task(facts: dict[str, Any]) -> Any:
    """The task a stage was trained on (single-label classification for stages that do not record one)."""
    return get_task(facts.get("task") or "single_label_classification")


def _stage_card_data(facts: dict[str, Any], pipeline_tag: str, name: str) -> ModelCardData:
    """The card's metadata: library, pipeline, base model, dataset, metrics, tags and evaluation results."""
    metrics, dataset = facts.get("metrics") or {}, facts.get("dataset")
    results = _eval_results(metrics, dataset, pipeline_tag)
    return ModelCardData(
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        base_model=facts.get("base_model") or None,
        datasets=[dataset] if dataset else None,
        metrics=sorted(metrics) or [_stage_task(facts).selection_metric],
        tags=[*TAGS, stage_dirname(int(facts["stage"]))],
        model_name=name if results else None,
        eval_results=results or None,
    )


def _eval_results(metrics: dict[str, Any], dataset: str | None, pipeline_tag: str) -> list[EvalResult]:
    """One Hub evaluation result per finite metric (none when the dataset is not recorded)."""
    return [
        EvalResult(
            task_type=pipeline_tag,
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split="validation",
            metric_type=metric,
            metric_value=float(value),
        )  # fmt: skip
        for metric, value in sorted(metrics.items())
        if dataset and isinstance(value, (int, float)) and math.isfinite(value)
    ]


def _stage_summary(facts: dict[str, Any]) -> str:
    """The card's title, what the stage is, the run's settings, its metrics and (when known) every module's."""
    stage, num_stages = int(facts["stage"]), int(facts["num_stages"])
    metrics = facts.get("metrics") or {}
    stage_metrics = "\n".join(f"| {n} | {format_value(metrics[n])} |" for n in sorted(metrics)) or "| - | - |"
    table = module_table(facts.get("module_metrics") or {})
    per_module = f"## Every module of the run\n\n{table}\n" if table else ""
    return f"""# Stage {stage} of {num_stages} of a TRGL run

Modules 1..{stage} of a network cut into {num_stages} modules and trained module-wise with
[TRGL]({PAPER_URL}) (transport-regularised greedy learning) by `trgl_hf`, followed by the auxiliary head of module
{stage}: a standalone `{facts.get("architecture")}` ({_stage_task(facts).name.replace("_", " ")}).

- base model: `{facts.get("base_model") or "built from a config"}`
- dataset: `{facts.get("dataset") or "not recorded"}`
- mode: `{facts.get("trgl_mode")}`, modules K = {num_stages}, transport term: `{facts.get("use_transport")}`,
  tau per module: `{facts.get("taus")}`

## Metrics of this stage (validation)

| metric | value |
| --- | --- |
{stage_metrics}

{per_module}"""


def _adapter_section(
    adapter: dict[str, Any] | None, location: str, revision: str | None, subfolder: str | None
) -> str:
    """How to load the stage as a PEFT adapter over the base truncated to its depth (LoRA runs only)."""
    if not adapter:
        return ""
    folder = f"{subfolder}/{adapter['folder']}" if subfolder else adapter["folder"]
    arguments = load_arguments(location, revision, folder, False)
    return f"""## Or as a PEFT adapter

The LoRA weights of this stage's blocks and its trained head, in `{adapter["folder"]}/`. They apply to the base model
truncated to this stage's {adapter["num_hidden_layers"]} layers (the adapter names no base model, so that the
full-depth base cannot be loaded under it by mistake):

```python
from peft import PeftModel
from transformers import {adapter["auto_class"]}

base = {adapter["auto_class"]}.from_pretrained(
    "{adapter["base_model"]}", num_hidden_layers={adapter["num_hidden_layers"]}, num_labels={adapter["num_labels"]},
    ignore_mismatched_sizes=True,
)
model = PeftModel.from_pretrained(base, {arguments})
```
"""


def _pipeline_section(pipeline_tag: str, arguments: str, has_processor: bool, in_subfolder: bool) -> str:
    processor, processor_class = ("tokenizer", "AutoTokenizer")
    if pipeline_tag.startswith("image"):
        processor, processor_class = ("image_processor", "AutoImageProcessor")
    if not has_processor:
        return (
            "## Use it in a pipeline\n\nNo tokenizer or image processor was given to the trainer "
            "(`processing_class`), so this stage has none: pass the one the model was trained with, e.g. "
            f'`pipeline("{pipeline_tag}", model=model, {processor}=...)`.\n'
        )
    call = _PIPELINE_CALLS.get(pipeline_tag, "predict(...)")
    if pipeline_tag == "image-classification":
        call = f"# {call}"
    if in_subfolder:  # `pipeline(model=repo_id)` reads the repository's root: give it the loaded model and processor
        imports = f"from transformers import {processor_class}, pipeline"
        build = (
            f'predict = pipeline("{pipeline_tag}", model=model, '
            f"{processor}={processor_class}.from_pretrained({arguments}))"
        )
    else:
        imports = "from transformers import pipeline"
        build = f'predict = pipeline("{pipeline_tag}", model={arguments})'
    return f"""## Use it in a pipeline

```python
{imports}

{build}
{call}
```
"""


def module_plot_svg(module_metrics: dict[Any, dict[str, Any]], metric: str, title: str) -> str | None:
    """A line plot of `metric` against the module index, as a standalone SVG (no plotting library needed).

    Returns:
        `str` or `None`: the SVG document, `None` when no module has a finite `metric`.
    """
    points = sorted(
        (int(stage), float(values[metric]))
        for stage, values in module_metrics.items()
        if isinstance(values.get(metric), (int, float)) and math.isfinite(values[metric])
    )
    if not points:
        return None
    width, height, margin = 420, 260, 48
    stages = [stage for stage, _ in points]
    low, high = min(v for _, v in points), max(v for _, v in points)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    first, last = min(stages), max(stages)

    def x(stage: int) -> float:
        return margin + (width - 2 * margin) * ((stage - first) / (last - first) if last > first else 0.5)

    def y(value: float) -> float:
        return height - margin - (height - 2 * margin) * (value - low) / (high - low)

    path = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in points)
    marks = "".join(
        f'<circle cx="{x(s):.1f}" cy="{y(v):.1f}" r="3.5"/><text x="{x(s):.1f}" y="{y(v) - 8:.1f}" '
        f'text-anchor="middle">{v:.4g}</text>'
        for s, v in points
    )
    ticks = "".join(f'<text x="{x(s):.1f}" y="{height - margin + 18}" text-anchor="middle">{s}</text>' for s in stages)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        f'font-size="11">\n<title>{title}</title>\n<rect width="100%" height="100%" fill="white"/>\n'
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="13">{title}</text>\n'
        f'<line x1="{margin}" y1="{height - margin}" x2="{width - margin}" y2="{height - margin}" stroke="black"/>\n'
        f'<line x1="{margin}" y1="{margin}" x2="{margin}" y2="{height - margin}" stroke="black"/>\n'
        f'<text x="{width / 2}" y="{height - 10}" text-anchor="middle">module</text>\n'
        f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" text-anchor="middle">{metric}</text>\n'
        f'<polyline points="{path}" fill="none" stroke="#1f77b4" stroke-width="2"/>\n'
        f'<g fill="#1f77b4">{marks}</g>\n<g>{ticks}</g>\n</svg>\n'
    )


def run_model_card(facts: dict[str, Any], stages: dict[int, str], plot_file: str | None) -> ModelCard:
    """Model card of a whole run (`output_dir/README.md`): settings, the per-module table and plot, the stages.

    Args:
        facts (`dict`): run facts as in `trgl_stage.json` (`num_stages`, `task`, `base_model`, `dataset`,
            `trgl_mode`, `taus`, `use_transport`, `module_metrics`) plus `training` (a dict of the main training
            arguments) and `global_step`.
        stages (`dict[int, str]`): for each written stage, how to load it (the arguments of `from_pretrained`).
        plot_file (`str`, *optional*): file name of the per-module plot next to the card.
    """
    task = get_task(facts.get("task") or "single_label_classification")
    num_stages = int(facts["num_stages"])
    dataset = facts.get("dataset")
    card_data = ModelCardData(
        library_name="transformers",
        base_model=facts.get("base_model") or None,
        datasets=[dataset] if dataset else None,
        metrics=[task.selection_metric],
        tags=[*TAGS, "trgl-run"],
    )
    table = module_table(facts.get("module_metrics") or {}) or "No module was evaluated (no `eval_dataset`)."
    plot = f"![{task.selection_metric} per module]({plot_file})\n" if plot_file else ""
    training = "\n".join(f"- `{key}`: `{value}`" for key, value in sorted((facts.get("training") or {}).items()))
    stage_lines = "\n".join(f"| {stage} | `from_pretrained({load})` |" for stage, load in sorted(stages.items()))
    return ModelCard(f"""---
{card_data.to_yaml()}
---

# A TRGL run: {num_stages} modules trained module-wise

A network cut into {num_stages} modules, each trained on its own auxiliary head's loss with
[TRGL]({PAPER_URL}) (transport-regularised greedy learning) by `trgl_hf`. Stage k (modules 1..k and head k) is a
standalone model: any stage can be used, the last is usually the most accurate.

- base model: `{facts.get("base_model") or "built from a config"}`
- dataset: `{dataset or "not recorded"}`
- task: `{task.name}`; mode: `{facts.get("trgl_mode")}`; transport term: `{facts.get("use_transport")}`,
  tau per module: `{facts.get("taus")}`
- optimisation steps, all phases: {facts.get("global_step")}

## Every module (validation)

{table}

{plot}
## Stages

| stage | load with the task's Auto class |
| --- | --- |
{stage_lines}

## Training arguments

{training}
""")


__all__ = ["module_plot_svg", "module_table", "run_model_card", "stage_card_facts", "stage_model_card"]
