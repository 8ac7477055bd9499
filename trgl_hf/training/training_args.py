"""`TRGLTrainingArguments`: `TrainingArguments` plus how the modules are scheduled."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments
from transformers.trainer_utils import HubStrategy

from .offload import OFFLOAD_CHOICES

logger = logging.getLogger(__name__)

TRGL_MODES = ("parallel", "sequential", "multilap")
PREFIX_CACHE_CHOICES = ("auto", "always", "never")
HUB_FINISH_TIMEOUT_S = 60.0
"""Default of `trgl_hub_finish_timeout`: the last stage of a base-size model and one retry of a transient failure fit;
a Hub that is down costs a minute, not the 6 minutes per push of the whole retry schedule."""


def stage_selection(value: Any) -> str | tuple[int, ...]:
    """`trgl_save_stages` in one form: `"all"`, `"last"`, `"none"` or a sorted tuple of 1-based stage numbers.

    Raises:
        `ValueError`: for anything else, naming the accepted values.
    """
    if isinstance(value, bool):
        return "all" if value else "none"
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("all", "last", "none"):
            return word
        if word in ("true", "false"):
            return "all" if word == "true" else "none"
        value = [part for part in word.split(",") if part.strip()]
    try:
        stages = tuple(sorted({int(str(item).strip()) for item in value}))
    except (TypeError, ValueError):
        stages = ()
    if not stages or stages[0] < 1:
        raise ValueError(
            f"`trgl_save_stages={value!r}`: give 'all' (or True), 'last', 'none' (or False), or 1-based stage numbers "
            "such as [2, 4] ('2,4' on the command line)."
        )
    return stages


@dataclass
class TRGLTrainingArguments(TrainingArguments):
    r"""
    [`~transformers.TrainingArguments`] for [`TRGLTrainer`]. `num_train_epochs` (or `max_steps`) is the training
    length *per module* in sequential and multi-lap modes, and of the whole run in parallel mode.

    Args:
        trgl_mode (`str`, *optional*, defaults to `"parallel"`):
            `"parallel"`: every batch goes through all modules, each module reads its predecessor's output detached
            and its loss is backpropagated at once (one module's graph alive at a time). `"sequential"`: module 1 is
            trained for `num_train_epochs`, then frozen (eval mode, no gradient), then module 2, and so on.
            `"multilap"`: sequential in `trgl_laps` laps of `num_train_epochs / trgl_laps` epochs per module.
        trgl_laps (`int`, *optional*, defaults to 2):
            Number of laps R of the `"multilap"` mode.
        trgl_lap_optimizer (`str`, *optional*, defaults to `"persist"`):
            Multilap: a module's optimizer state and learning-rate schedule continue across its laps, the schedule
            spanning all of them, as the official code keeps one optimizer per module (`"persist"`); or each lap
            starts a fresh optimizer and a schedule of its own (`"fresh"`).
        trgl_prefix_cache (`str`, *optional*, defaults to `"auto"`):
            Sequential and multi-lap modes: compute the frozen prefix's outputs once per stage and train on them
            (`"always"`), recompute them every step (`"never"`), or cache only when the input pipeline is
            deterministic (`"auto"`): a stored map-style dataset without an on-the-fly transform, and a standard
            collator. Iterable (streaming) datasets, transforms, custom collators and datasets of other kinds count as
            random under `"auto"`; the logs say why. Module k's cache is computed from module k-1's (one module pass
            over the data per phase) at the training batch size.
        trgl_prefix_cache_max_memory (`str` or `int`, *optional*):
            Largest prefix cache kept in memory (bytes, or e.g. `"8GiB"`); a larger one is written to disk as
            memory-mapped safetensors shards, so host memory stays bounded whatever the dataset's size. Defaults to
            25% of the memory available when the cache is built (`MemAvailable`, or what the process's cgroup memory
            limit leaves where that is less). With several processes the cache is always a set of
            files that every process of the machine maps (one copy in the page cache).
        trgl_prefix_cache_dir (`str`, *optional*):
            Where a disk-backed cache is written (defaults to `output_dir/.trgl-prefix-cache`); a fast local disk is
            best. Removed when the run ends.
        trgl_prefix_cache_dtype (`str`, *optional*):
            Store the cached hidden states as `"float16"` or `"bfloat16"` (half the size); they are cast back to the
            computed dtype when read. Defaults to the dtype the modules computed (exact).
        trgl_offload (`str`, *optional*, defaults to `"auto"`):
            Where the modules a sequential or multi-lap phase does not train live. `"disk"`: in the run's module
            files (`trgl-progress-NN/trgl-module-XX.safetensors`, and `output_dir/.trgl-offload` for a base built in
            memory), memory-mapped: a frozen module is read only when a forward needs it (never while the prefix cache
            feeds the trained one) and its pages are the kernel's to drop, so memory holds the trained module, its
            head, optimizer and activations. Results are bit-identical to `"none"` (everything resident). `"auto"`
            (the default) is `"disk"` wherever it applies (one CPU process, sequential or multilap, no FSDP) and
            `"none"` elsewhere; `"disk"` where it cannot apply is refused.
        trgl_head_lr_multiplier (`float`, *optional*):
            The auxiliary heads' learning rate is `learning_rate` times this (this library's extension, for
            pretrained bases whose new heads need a larger step than the pretrained blocks). Defaults, for a base
            loaded with `from_pretrained`, to what puts the heads at
            `trgl_hf.modeling.pretrained_defaults.PRETRAINED_HEAD_LEARNING_RATE` (1e-3) or `learning_rate` if larger,
            and to 1.0 (the paper's setting) for a base built from a config.
        trgl_head_warmup_steps (`int`, *optional*):
            At the start of every phase, train only the heads for this many optimizer steps (the modules' gradients
            are dropped), as linear-probe-then-fine-tune does (this library's extension). Defaults to
            `trgl_hf.modeling.pretrained_defaults.PRETRAINED_HEAD_WARMUP_STEPS` (0) for a pretrained base, else 0.
        trgl_save_stages (`str`, `bool` or `list[int]`, *optional*, defaults to `"all"`):
            Which `output_dir/stage-XX` folders to write as the modules become final: `"all"` (or `True`), `"last"`
            (stage K only: a K-stage run of a large model otherwise writes K truncated copies, O(K^2) storage),
            `"none"` (or `False`), or stage numbers (`[2, 4]`, or `"2,4"` on the command line). Stages not written are
            neither pushed nor recorded; the run's weights (`trgl-progress-NN/`) are kept whatever this says.
        trgl_hub_strategy (`str`, *optional*, defaults to `"branch"`):
            With `push_to_hub=True`, push each stage as soon as it is final to the branch `stage-XX` of
            `hub_model_id` (`"branch"`, the last stage also to `main`) or to its folder `stages/stage-XX` on `main`
            (`"subfolder"`). `hub_token` and `hub_private_repo` are honoured; the endpoint is `HF_ENDPOINT`. Pushes run
            in the background while training goes on; a failed push is retried with backoff, and what still fails is
            reported at the end of `train()` with the call that pushes it again (training never stops for the Hub).
        hub_strategy (`str` or [`~trainer_utils.HubStrategy`], *optional*, defaults to `"every_save"`):
            When stages are pushed with `push_to_hub=True`: each stage as soon as its module is final and the stage
            is saved (`"every_save"`), or every stage once training is over, at the end of `train()` (`"end"`).
            `"checkpoint"` and `"all_checkpoints"` push `Trainer` checkpoints to resume from the Hub, and a TRGL run
            resumes from its `output_dir` (`trgl_state.json`, `trgl-progress-NN/`, `phases/`), which is not pushed:
            they are refused when `push_to_hub=True` (and ignored without it, as `Trainer` does).
        trgl_hub_finish_timeout (`float`, *optional*, defaults to 60):
            Seconds the end of `train()` waits at most for the pushes still queued, running or being retried
            (huggingface_hub has no timeout of its own: an upload can hang forever); with `hub_strategy="end"`, where
            every push starts at the end, this many seconds per push. Then `train()` returns, no new
            attempt starts, and what is not pushed is logged with the retry call (`trainer.push_to_hub()`) and kept in
            `trainer.hub_push_failures`; an upload still running is left to a daemon thread (it never keeps the
            process alive, and writes the same files as the retry if it completes). `None` waits for every push and
            all its retries (10 s, 60 s and 300 s apart). The default leaves time for the last stage of a base-size
            model and one retry of a transient failure, and costs a minute when the Hub is down.
        trgl_dataset_name (`str`, *optional*):
            The dataset's Hub id (e.g. `"stanfordnlp/sst2"`), recorded in the stages' model cards. Defaults to the
            training dataset's own name when it has one (a dataset loaded from local files has none).
    """

    trgl_mode: str = field(
        default="parallel", metadata={"help": "Module schedule: 'parallel', 'sequential' or 'multilap'."}
    )
    trgl_laps: int = field(default=2, metadata={"help": "Number of laps of the 'multilap' mode."})
    trgl_offload: str = field(
        default="auto",
        metadata={"help": "Where inactive modules live: 'disk' (memory-mapped module files), 'none', or 'auto'."},
    )
    trgl_lap_optimizer: str = field(
        default="persist",
        metadata={"help": "Multilap: keep each module's optimizer and schedule across its laps ('persist') or "
                  "start fresh ones every lap ('fresh')."},
    )  # fmt: skip
    trgl_prefix_cache: str = field(
        default="auto", metadata={"help": "Cache the frozen prefix's outputs: 'auto', 'always' or 'never'."}
    )
    trgl_prefix_cache_max_memory: str | None = field(
        default=None,
        metadata={"help": "Largest in-memory prefix cache (bytes or '8GiB'); default 25%% of available memory."},
    )
    trgl_prefix_cache_dir: str | None = field(
        default=None, metadata={"help": "Folder of a disk-backed prefix cache (default output_dir/.trgl-prefix-cache)"}
    )
    trgl_prefix_cache_dtype: str | None = field(
        default=None, metadata={"help": "Store cached hidden states as 'float16' or 'bfloat16' (default: as computed)"}
    )
    trgl_head_lr_multiplier: float | None = field(
        default=None,
        metadata={"help": "Auxiliary heads' learning rate = learning_rate x this (extension; default: heads at "
                  "max(1e-3, learning_rate) for a pretrained base, x1 otherwise)."},
    )  # fmt: skip
    trgl_head_warmup_steps: int | None = field(
        default=None,
        metadata={"help": "Train only the heads for this many steps at the start of each phase (default 0)."},
    )  # fmt: skip
    trgl_save_stages: str = field(
        default="all",
        metadata={"help": "Stages to write as modules become final: 'all', 'last', 'none' or numbers such as '2,4'."},
    )
    trgl_hub_strategy: str = field(
        default="branch",
        metadata={"help": "Push stages to one branch each ('branch') or to subfolders ('subfolder')."},
    )
    hub_strategy: HubStrategy | str = field(
        default="every_save",
        metadata={"help": "When stages are pushed: each as soon as it is final ('every_save') or all at the end of "
                  "train() ('end'); 'checkpoint' and 'all_checkpoints' cannot apply (a TRGL run resumes from "
                  "output_dir) and are refused with push_to_hub."},
    )  # fmt: skip
    trgl_hub_finish_timeout: float | None = field(
        default=HUB_FINISH_TIMEOUT_S,
        metadata={"help": "Seconds the end of train() waits at most for the Hub pushes still running; "
                  "then it returns and logs what to push again with trainer.push_to_hub()."},
    )  # fmt: skip
    trgl_dataset_name: str | None = field(
        default=None, metadata={"help": "Hub id of the dataset, for the model cards (default: the dataset's name)."}
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "TRGL synchronises gradients itself; DDP never needs to search for them."}
    )

    def __post_init__(self):
        self._train_cpu_processes_on_cpu()
        super().__post_init__()
        self._check_trgl_choices()
        self._check_hub_settings()
        self.trgl_save_stages = stage_selection(self.trgl_save_stages)
        self._check_training_length()
        self._check_compile_and_precision()
        self._check_prefix_cache_settings()
        self._check_head_settings()
        from .prefix_cache import parse_bytes

        parse_bytes(self.trgl_prefix_cache_max_memory)  # refuses what is not a size

    def _train_cpu_processes_on_cpu(self) -> None:
        """Set `use_cpu` when launched on several CPU processes (`accelerate launch --multi_gpu` / torchrun): without
        it, transformers would see one process while the process group has several, and every rank would write."""
        if not self.use_cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _accelerator_available():
            logger.info("Several processes and no accelerator: training on CPU processes (`use_cpu=True`).")
            self.use_cpu = True

    def _check_trgl_choices(self) -> None:
        """Refuse a mode, number of laps, offload, lap optimizer or Hub strategy that does not exist."""
        if self.trgl_mode not in TRGL_MODES:
            raise ValueError(f"`trgl_mode` must be one of {TRGL_MODES}, got {self.trgl_mode!r}.")
        if not isinstance(self.trgl_laps, int) or isinstance(self.trgl_laps, bool):
            raise ValueError(f"`trgl_laps` must be a whole number of laps, got {self.trgl_laps!r}.")
        if self.trgl_laps < 1:
            raise ValueError(f"`trgl_laps` must be at least 1, got {self.trgl_laps}.")
        if self.trgl_offload not in OFFLOAD_CHOICES:
            raise ValueError(f"`trgl_offload` must be one of {OFFLOAD_CHOICES}, got {self.trgl_offload!r}.")
        if self.trgl_lap_optimizer not in ("persist", "fresh"):
            raise ValueError(f"`trgl_lap_optimizer` must be 'persist' or 'fresh', got {self.trgl_lap_optimizer!r}.")
        if self.trgl_hub_strategy not in ("branch", "subfolder"):
            raise ValueError(f"`trgl_hub_strategy` must be 'branch' or 'subfolder', got {self.trgl_hub_strategy!r}.")

    def _check_training_length(self) -> None:
        """Refuse a run with nothing to train, laps that cannot fit its steps, or a data order multilap cannot
        continue."""
        if self.max_steps == 0 or (self.max_steps < 0 and not self.num_train_epochs > 0):
            raise ValueError(
                f"Nothing to train: `max_steps={self.max_steps}`, `num_train_epochs={self.num_train_epochs}`; give a "
                "positive `num_train_epochs` or `max_steps` (per module outside parallel mode)."
            )
        if self.trgl_mode == "multilap" and 0 < self.max_steps < self.trgl_laps:
            raise ValueError(
                f"`trgl_laps={self.trgl_laps}` laps cannot fit `max_steps={self.max_steps}` steps per module (each "
                "lap needs at least one step): lower `trgl_laps` or raise `max_steps`."
            )
        if self.trgl_mode == "multilap" and self.train_sampling_strategy != "random":
            raise ValueError(
                "multilap continues one seeded random data order across laps; `train_sampling_strategy="
                f"{self.train_sampling_strategy!r}` cannot be continued: use 'random', or the sequential mode."
            )

    def _check_compile_and_precision(self) -> None:
        """Refuse `torch_compile`, and `fp16` where it would silently train in float32."""
        if self.torch_compile:
            raise ValueError(
                "`torch_compile=True` is not supported by TRGLTrainer (its modules run one by one, outside the "
                "compiled model forward): set `torch_compile=False`."
            )
        if self.fp16 and (self.use_cpu or not _accelerator_available()):
            raise ValueError(
                "`fp16=True` needs a CUDA / XPU / NPU device; on CPU it would silently train in float32: use "
                "`bf16=True` for mixed precision on CPU, or neither."
            )

    def _check_prefix_cache_settings(self) -> None:
        """Refuse a prefix-cache choice or storage dtype that does not exist."""
        if self.trgl_prefix_cache not in PREFIX_CACHE_CHOICES:
            raise ValueError(
                f"`trgl_prefix_cache` must be one of {PREFIX_CACHE_CHOICES}, got {self.trgl_prefix_cache!r}."
            )
        if self.trgl_prefix_cache_dtype not in (None, "float16", "bfloat16", "float32"):
            raise ValueError(
                "`trgl_prefix_cache_dtype` must be 'float16', 'bfloat16' or None, got "
                f"{self.trgl_prefix_cache_dtype!r}."
            )

    def _check_head_settings(self) -> None:
        """Refuse a head learning-rate multiplier that is not positive, or a head warmup that is not a step count."""
        if self.trgl_head_lr_multiplier is not None and not self.trgl_head_lr_multiplier > 0:
            raise ValueError(f"`trgl_head_lr_multiplier` must be positive, got {self.trgl_head_lr_multiplier!r}.")
        warmup = self.trgl_head_warmup_steps
        if warmup is not None and (not isinstance(warmup, (int, float)) or int(warmup) != warmup or warmup < 0):
            raise ValueError(
                f"`trgl_head_warmup_steps` must be a whole number of steps >= 0, got {self.trgl_head_warmup_steps!r}."
            )

    def saves_stage(self, stage: int, num_stages: int) -> bool:
        """Whether stage `stage` (1-based) of a `num_stages`-stage run is written (see `trgl_save_stages`)."""
        selection = self.trgl_save_stages
        if selection in ("all", "last", "none"):
            return selection == "all" or (selection == "last" and stage == num_stages)
        return stage in selection

    def saves_any_stage(self) -> bool:
        """Whether any stage folder is written."""
        return self.trgl_save_stages != "none"

    def _check_hub_settings(self) -> None:
        """Refuse `hub_strategy` values that cannot apply to a TRGL run, and a wait bound that is not a duration."""
        if self.push_to_hub and self.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
            raise ValueError(
                f"`hub_strategy={HubStrategy(self.hub_strategy).value!r}` pushes Trainer checkpoints to resume from "
                "the Hub, but a TRGL run resumes from its `output_dir` (trgl_state.json, trgl-progress-NN/, phases/), "
                "which is not pushed: use `hub_strategy='every_save'` (each stage as soon as it is final) or 'end' "
                "(every stage at the end of `train()`), and resume with `resume_from_checkpoint=True` on the same "
                "`output_dir`."
            )
        timeout = self.trgl_hub_finish_timeout
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not 0 <= timeout < float("inf")):  # fmt: skip
            raise ValueError(
                f"`trgl_hub_finish_timeout` must be a number of seconds >= 0 (or None to wait for every push), got "
                f"{timeout!r}."
            )


def _accelerator_available() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
