"""Configuration of a TRGL model: how the base network is cut and which local objective each module minimises."""

from __future__ import annotations

import difflib
import math
from typing import Any, Literal

from transformers import AutoConfig, PreTrainedConfig

from .hf_internals import SubConfigSpec
from .transport import DEFAULT_TAU, TransportSchedule

SPLIT_POLICIES = ("equal", "balanced")
TAU_SCHEDULES = ("halves", "constant", "multipliers")
AUX_HEADS = ("conv", "linear", "native", "mean", "tied")


BASE_CONFIG_KEYS = {
    "transformers_version", "model_type", "architectures", "torch_dtype", "name_or_path", "_name_or_path",
    "_commit_hash", "output_attentions", "attn_implementation", "experts_implementation", "per_layer_config",
    "num_labels", "keys_to_ignore_at_inference", "auto_map", "use_cache", "tie_word_embeddings", "torchscript",
    "pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id", "tokenizer_class",
    "prefix", "finetuning_task", "task_specific_params", "is_decoder", "add_cross_attention", "tf_legacy_loss",
    "pruned_heads", "output_scores", "return_dict_in_generate",
}  # fmt: skip
"""Keys a saved configuration may hold besides the fields (transformers writes or reads them for every config)."""


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class TRGLConfig(PreTrainedConfig):
    r"""
    Configuration of a [`TRGLModel`]: a base network cut into `num_modules` consecutive modules, each with an
    auxiliary head, each trained on its own loss

        loss_k = CE(head_k(h_k), y) + 1 / (2 tau_k) * sum over residual branches r of module k of mean(r ** 2)

    (Karkar et al., NeurIPS 2023). With `use_transport=False` the second term is dropped: plain greedy training
    ("VanGL"), the baseline TRGL improves on.

    Args:
        base_config (`dict` or `PreTrainedConfig`, *optional*):
            Configuration of the task model that was cut (e.g. a `ResNetConfig`). Filled in by
            [`TRGLModel.from_base`]; needed to rebuild the model in `TRGLModel.from_pretrained`.
        base_generation_config (`dict`, *optional*):
            The base language model's generation settings (`GenerationConfig.to_diff_dict()`), given to every stage
            so that stages generate as the base model does (set by `TRGLModel.from_base`).
        base_model_name_or_path (`str`, *optional*):
            Hub id or local path the base model was loaded from, recorded for model cards.
        peft_config (`dict`, *optional*):
            The LoRA configuration of a `peft` base (set by `TRGLModel.from_base` from a `PeftModel`): only the
            adapters and the heads train, and `from_pretrained` injects the same adapters before loading weights.
        family (`str`, *optional*):
            Name of the adapter that cut the base model (`"resnet"`, ...). Found by probing when left empty.
        num_modules (`int`, *optional*, defaults to 4):
            Number of modules K the residual blocks are split into. Ignored when `split` is given.
        split (`list[int]`, *optional*):
            Explicit number of residual blocks per module, summing to the number of blocks of the base model.
        split_policy (`str`, *optional*, defaults to `"equal"`):
            `"equal"` gives every module the same number of blocks (extra blocks go to the first modules);
            `"balanced"` balances the estimated training activation memory of the modules (the paper's TRGL*).
        tau (`float` or `list[float]`, *optional*):
            Transport step size. A float is expanded with `tau_schedule`; a list gives tau_k per module.
            Defaults to 10 (`DEFAULT_TAU`), the best of {1, 10, 100} on a validation split in short CIFAR-10 runs
            (tau = 1, the paper's STL-10 value, shrinks the residual branches to almost nothing in short runs); for a
            base loaded with `from_pretrained` trained with `tau_scale="relative"`, [`TRGLModel.from_base`] sets
            1000 (`trgl_hf.modeling.pretrained_defaults.PRETRAINED_TAU`, chosen on SST-2's validation split).
        tau_schedule (`str`, *optional*, defaults to `"halves"`):
            `"halves"`: tau / 2 for the first floor(K / 2) modules and tau for the others (the paper's rule);
            `"constant"`: tau for every module; `"multipliers"`: the method of multipliers of the paper's
            appendix D (see `multiplier_*`).
        tau_scale (`str`, *optional*):
            `"absolute"`: tau as in the paper. `"relative"` (an extension of this library, not in the paper): each
            module's tau_k is multiplied by its branch energy measured on its first training batch, so the penalty
            starts at transport / (2 tau_k) = 1 / (2 tau) whatever the scale of the branches (pretrained transformers
            have large ones); the measured energies are kept in the model's `energy_scale` buffer (saved with it).
            Left unset, [`TRGLModel.from_base`] picks `"relative"` for a base loaded with `from_pretrained` when `tau`
            is unset too, else `"absolute"` (see `trgl_hf.modeling.pretrained_defaults`).
        use_transport (`bool`, *optional*, defaults to `True`):
            Add the transport term. `False` trains the VanGL baseline.
        multiplier_init (`float`, *optional*, defaults to 1.0):
            Initial multiplier lambda_0 (same for every module) of the `"multipliers"` schedule; the transport term
            is weighted 1 / lambda_k.
        multiplier_step (`float`, *optional*, defaults to 1.0):
            Increase factor h: every `multiplier_period` steps lambda_k += h * (current task loss of module k).
        multiplier_period (`int`, *optional*, defaults to 50):
            Period s, in optimizer steps, of the multiplier update.
        aux_head (`str`, *optional*):
            `"native"`: a copy of the family's own head (transformers: final norm / pooler + classifier or LM head;
            ResNets: pooling + linear), so stages export as native truncated models; `"conv"` (ResNets): the
            paper's head (conv3x3, ReLU, average pooling, BatchNorm, linear); `"linear"` (ResNets): pooling + linear;
            `"mean"` (text sequence classifiers without a final norm, e.g. BERT): the mean of the token states over
            the attention mask, LayerNorm, linear (this library's extension: the first layers' [CLS] state of a
            pretrained encoder barely varies between sentences); its stages load with `trust_remote_code=True`.
            `"tied"` (causal language models): each module's head is its own copy of the final norm, and every head
            projects with one shared vocabulary matrix — the input embedding of a base with tied embeddings (GPT-2),
            module 1's LM head otherwise — trained by module 1 alone (later heads read it detached), so K heads cost
            K final norms instead of K vocab x hidden matrices; stages export as the native `*ForCausalLM`.
            Defaults to `"conv"` for ResNets, `"mean"` for pretrained text classifiers that can export it exactly
            (see `trgl_hf.modeling.pretrained_defaults`), `"tied"` for causal LMs built from a config whose LM head is
            not their input embedding (Llama, Mistral, Qwen2, ... with `tie_word_embeddings=False`; chosen on Tiny
            Shakespeare's validation split, see `trgl_hf.modeling.modeling_trgl.DECODER_TIED_DEFAULT`; LoRA bases fall
            back to `"native"`) and `"native"` for other transformers (decoders with tied embeddings, pretrained
            decoders).
        head_pool_size (`int`, *optional*, defaults to 2):
            Side of the pooled feature map of the `"conv"` head (adaptive average pooling).
        label_smoothing (`float`, *optional*, defaults to 0.0):
            Label smoothing of every module's cross-entropy.
        lm_loss_chunk_tokens (`int`, *optional*):
            Causal language models: the next-token loss of a module being trained is computed over sequence chunks of
            about this many tokens, each chunk's logits recomputed in backward, so a module's whole
            `(batch, length, vocab)` logits never exist in training (same loss and gradients). Unset: as many tokens
            as fit 64 MiB of float32 logits (`trgl_hf.modeling.losses.LM_LOGITS_CHUNK_BYTES`).
        image_size (`int`, *optional*):
            Input resolution used to probe block shapes and activation sizes. Taken from the base config when it
            has one, else 224.
        trained_modules (`int`, *optional*, defaults to 0):
            How many leading modules have finished training (written by the trainer).
        task (`str`, *optional*, defaults to `"single_label_classification"`):
            What every head is trained for (see `trgl_hf.modeling.tasks`): `"single_label_classification"`,
            `"multi_label_classification"`, `"regression"`, `"causal_lm"`, `"token_classification"` or
            `"masked_lm"`; set from the base model's class and `problem_type` by [`TRGLModel.from_base`].
        module_output_shapes (`list[list[int]]`, *optional*):
            Output shape (channels, then spatial sizes) of every module for one example, measured by
            [`TRGLModel.from_base`]; used to rebuild the heads.
    """

    model_type = "trgl"
    sub_configs_defaults = {
        "base_config": SubConfigSpec(config_class=AutoConfig, model_type="resnet", optional=True),
    }

    base_config: dict | PreTrainedConfig | None = None
    base_model_name_or_path: str | None = None
    base_generation_config: dict | None = None
    peft_config: dict | None = None
    family: str | None = None
    num_modules: int = 4
    split: list[int] | None = None
    split_policy: Literal["equal", "balanced"] = "equal"
    tau: float | list[float] | None = None
    tau_schedule: Literal["halves", "constant", "multipliers"] = "halves"
    tau_scale: Literal["absolute", "relative"] | None = None
    use_transport: bool = True
    multiplier_init: float = 1.0
    multiplier_step: float = 1.0
    multiplier_period: int = 50
    aux_head: Literal["conv", "linear", "native", "mean", "tied"] | None = None
    head_pool_size: int = 2
    label_smoothing: float = 0.0
    lm_loss_chunk_tokens: int | None = None
    image_size: int | None = None
    trained_modules: int = 0
    task: str = "single_label_classification"
    module_output_shapes: list[list[int]] | None = None

    def __post_init__(self, **kwargs):
        unknown = sorted(set(kwargs) - set(PreTrainedConfig.__dataclass_fields__) - BASE_CONFIG_KEYS)
        if unknown:
            close = {name: difflib.get_close_matches(name, self.__dataclass_fields__, n=1) for name in unknown}
            hints = ", ".join(f"`{name}`" + (f" (did you mean `{match[0]}`?)" if match else "")
                              for name, match in close.items())  # fmt: skip
            raise ValueError(
                f"TRGLConfig has no field {hints}: fix the name (the fields are listed in `TRGLConfig`'s docstring)."
            )
        super().__post_init__(**kwargs)
        self.keys_to_ignore_at_inference = ["module_losses", "transport"]
        self.validate_trgl()

    @classmethod
    def register_for_auto_class(cls, auto_class: Any = "AutoConfig") -> None:
        """Does nothing: [`TRGLModel.save_pretrained`] writes the remote code of the whole model itself (transformers
        calls this on classes loaded through remote code, and would then copy this file alone into saved folders)."""

    def validate_trgl(self) -> None:
        """Raise a `ValueError` naming the field to change when the configuration cannot describe a TRGL model."""
        self._check_whole_numbers()
        self._check_split()
        self._check_choices()
        self._check_taus()
        self._check_schedule_and_loss()

    def _check_whole_numbers(self) -> None:
        """Refuse counts, the LM loss chunk and the image size that are not whole numbers."""
        for name in ("num_modules", "multiplier_period", "head_pool_size", "trained_modules"):
            if not _is_integer(getattr(self, name)):
                raise ValueError(f"`{name}` must be an integer, got {getattr(self, name)!r}.")
        if self.lm_loss_chunk_tokens is not None and (
            not _is_integer(self.lm_loss_chunk_tokens) or self.lm_loss_chunk_tokens < 1
        ):
            raise ValueError(
                f"`lm_loss_chunk_tokens` must be a positive whole number of tokens (or unset for the automatic size), "
                f"got {self.lm_loss_chunk_tokens!r}."
            )
        if self.image_size is not None and not _is_integer(self.image_size):
            raise ValueError(f"`image_size` must be an integer (pixels), got {self.image_size!r}.")

    def _check_split(self) -> None:
        """Refuse a `split` that is not blocks per module (it then sets `num_modules`) and fewer than one module."""
        if self.split is not None:
            if not isinstance(self.split, (list, tuple)) or not all(_is_integer(n) for n in self.split):
                raise ValueError(f"`split` must list whole numbers of blocks per module, got {self.split!r}.")
            if len(self.split) == 0 or any(int(n) < 1 for n in self.split):
                raise ValueError(f"`split` must list at least one block per module, got {self.split}.")
            self.num_modules = len(self.split)
        if int(self.num_modules) < 1:
            raise ValueError(f"`num_modules` must be at least 1, got {self.num_modules}.")

    def _check_choices(self) -> None:
        """Refuse a split policy, tau schedule, tau scale or head kind that does not exist, or two that conflict."""
        if self.split_policy not in SPLIT_POLICIES:
            raise ValueError(f"`split_policy` must be one of {SPLIT_POLICIES}, got {self.split_policy!r}.")
        if self.tau_schedule not in TAU_SCHEDULES:
            raise ValueError(f"`tau_schedule` must be one of {TAU_SCHEDULES}, got {self.tau_schedule!r}.")
        if self.tau_scale not in (None, "absolute", "relative"):
            raise ValueError(f"`tau_scale` must be 'absolute' or 'relative', got {self.tau_scale!r}.")
        if self.tau_scale == "relative" and self.tau_schedule == "multipliers":
            raise ValueError(
                "`tau_scale='relative'` scales tau, but `tau_schedule='multipliers'` replaces tau by learned "
                "multipliers: use one of them."
            )
        if self.aux_head is not None and self.aux_head not in AUX_HEADS:
            raise ValueError(f"`aux_head` must be one of {AUX_HEADS}, got {self.aux_head!r}.")

    def _check_taus(self) -> None:
        """Refuse a tau that is not positive, and a list of taus that learned multipliers replace or that does not
        give one per module."""
        taus = self.tau if isinstance(self.tau, (list, tuple)) else [DEFAULT_TAU if self.tau is None else self.tau]
        for tau in taus:
            if not isinstance(tau, (int, float)) or not tau > 0 or math.isnan(tau):
                raise ValueError(
                    f"`tau` must be a positive number (or a list of them, one per module), got {self.tau!r}; "
                    "use `use_transport=False` for training without the transport term."
                )
        if isinstance(self.tau, (list, tuple)) and self.tau_schedule == "multipliers":
            raise ValueError(
                "`tau` lists one tau per module, but `tau_schedule='multipliers'` replaces tau by learned "
                "multipliers: give a single `tau` or another `tau_schedule`."
            )
        if isinstance(self.tau, (list, tuple)) and len(self.tau) != self.num_modules:
            raise ValueError(
                f"`tau` lists {len(self.tau)} values but the model has {self.num_modules} modules: "
                "give one per module."
            )

    def _check_schedule_and_loss(self) -> None:
        """Refuse a multiplier schedule, label smoothing or head pool size out of range."""
        if self.multiplier_init <= 0 or self.multiplier_step < 0 or self.multiplier_period < 1:
            raise ValueError(
                "The multiplier schedule needs `multiplier_init` > 0, `multiplier_step` >= 0 and "
                "`multiplier_period` >= 1."
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {self.label_smoothing}.")
        if self.head_pool_size < 1:
            raise ValueError(f"`head_pool_size` must be at least 1, got {self.head_pool_size}.")

    def module_taus(self) -> list[float]:
        """Return tau_k for every module (`inf` when the transport term is off), see [`TransportSchedule`].

        Returns:
            `list[float]`: one value per module, following `tau` and `tau_schedule`.
        """
        return TransportSchedule(self).taus()


__all__ = ["DEFAULT_TAU", "TRGLConfig"]
