"""Quick start: cut a CIFAR-style ResNet-20 into 4 modules and train them with TRGL on real handwritten digits.

Offline (scikit-learn ships the data), about two minutes on 2 CPU cores. Every argument of `TRGLTrainingArguments`
can be overridden on the command line, e.g. `--trgl_mode parallel` or `--num_train_epochs 20`:

    python recipes/train_digits.py
    accelerate launch recipes/train_digits.py --trgl_mode parallel

The digits are given to the model as RGB (three equal channels) and every stage holds the image processor that maps a
digit picture (8x8 grayscale, pixel = 15 x intensity; see `common.digits_image`) to exactly those pixels, so
`pipeline("image-classification", model="trgl-digits/stage-02")` labels a picture "0" .. "9".
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import (  # noqa: E402
    class_names,
    digits_for_pipeline,
    first_training_batch,
    label_maps,
    training_step_bytes,
)
from transformers import HfArgumentParser, set_seed  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from trgl_hf import (  # noqa: E402
    CifarResNetConfig,
    CifarResNetForImageClassification,
    TRGLConfig,
    TRGLModel,
    TRGLTrainer,
    TRGLTrainingArguments,
    load_digits_dataset,
)

DEFAULTS = [
    "--output_dir", "trgl-digits",
    "--trgl_mode", "sequential",
    "--num_train_epochs", "8",
    "--per_device_train_batch_size", "64",
    "--per_device_eval_batch_size", "256",
    "--learning_rate", "0.05",
    "--optim", "sgd",
    "--optim_args", "momentum=0.9",
    "--weight_decay", "5e-4",
    "--lr_scheduler_type", "cosine",
    "--eval_strategy", "no",
    "--save_strategy", "no",
    "--logging_steps", "50",
    "--report_to", "none",
    "--seed", "0",
]  # fmt: skip


@dataclass
class ModelArguments:
    """What to cut and how."""

    depth: int = field(default=20, metadata={"help": "Depth of the CIFAR ResNet (20, 32, 44, 56 or 110)."})
    num_modules: int = field(default=4, metadata={"help": "Number of modules K."})
    tau: float = field(default=10.0, metadata={"help": "Transport step size tau (tau/2 for the first half)."})
    use_transport: bool = field(default=True, metadata={"help": "False trains the VanGL baseline."})
    aux_head: str = field(default="conv", metadata={"help": "'conv' (the paper's head) or 'linear'."})


def main(argv: list[str]) -> dict[str, float]:
    parser = HfArgumentParser((ModelArguments, TRGLTrainingArguments))
    model_args, training_args = parser.parse_args_into_dataclasses(args=DEFAULTS + argv)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    set_seed(training_args.seed)

    splits, processor = digits_for_pipeline(load_digits_dataset(seed=training_args.seed))
    names = class_names(splits["train"], "labels", None)  # "0" .. "9"
    base_config = CifarResNetConfig.from_depth(
        model_args.depth, num_channels=3, num_labels=len(names), image_size=8, **label_maps(names)
    )
    base = CifarResNetForImageClassification(base_config)
    config = TRGLConfig(
        num_modules=model_args.num_modules,
        tau=model_args.tau,
        use_transport=model_args.use_transport,
        aux_head=model_args.aux_head,
        head_pool_size=1,
    )
    model = TRGLModel.from_base(base, config)

    trainer = TRGLTrainer(
        model=model, args=training_args, train_dataset=splits["train"], eval_dataset=splits["validation"],
        processing_class=processor,
    )  # fmt: skip
    print(
        f"Training a CIFAR ResNet-{model_args.depth} cut into {model.num_modules} modules "
        f"(blocks per module: {model.config.split}) in {training_args.trgl_mode} mode, "
        f"{'TRGL, tau per module ' + str(model.config.module_taus()) if config.use_transport else 'VanGL'}, "
        f"on {len(splits['train'])} digits images."
    )
    inputs = first_training_batch(trainer)
    end_to_end = training_step_bytes(base, inputs)  # the base: the same blocks, trained end-to-end
    per_module = [training_step_bytes(model, inputs, k) for k in range(model.num_modules)]
    trainer.train()
    validation = trainer.evaluate()
    test = trainer.evaluate(splits["test"], metric_key_prefix="test")

    if trainer.is_world_process_zero():
        mib = 2**20
        print("\n| module | blocks | validation accuracy | test accuracy | training-step memory (MiB) |")
        print("| --- | --- | --- | --- | --- |")
        for k in range(1, model.num_modules + 1):
            print(
                f"| {k} | {sum(model.config.split[:k])} | {validation[f'eval_module_{k}_accuracy']:.3f} "
                f"| {test[f'test_module_{k}_accuracy']:.3f} | {per_module[k - 1] / mib:.2f} |"
            )
        print(f"| end-to-end (the same {sum(model.config.split)} blocks) | | | | {end_to_end / mib:.2f} |")
        print(
            f"\nEach module trained in at most {max(per_module) / end_to_end:.0%} of the memory an end-to-end step of "
            "the same model takes on the same batch (weights, gradients and momentum of what trains, plus saved "
            "activations; measured on the first training batch), and no stage needs the modules after it."
        )
        best = validation["eval_best_module"]
        print(f"\nBest module on validation: {best} (test accuracy {test[f'test_module_{best}_accuracy']:.3f}).")
        stage_dir = os.path.join(training_args.output_dir, f"stage-{best:02d}")
        print(
            f"Stages written to {training_args.output_dir}/stage-01 .. stage-{model.num_modules:02d}. Load one with:"
        )
        print("    import trgl_hf  # or pass trust_remote_code=True without trgl_hf installed")
        print("    from transformers import AutoModelForImageClassification")
        print(f'    model = AutoModelForImageClassification.from_pretrained("{stage_dir}")')
        print("or label a digit picture (8x8 grayscale, pixel = 15 x intensity 0..16) with:")
        print("    from transformers import pipeline")
        print(f'    pipeline("image-classification", model="{stage_dir}")(image)')
    return {**validation, **test}


if __name__ == "__main__":
    main(sys.argv[1:])
