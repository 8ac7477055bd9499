"""Transformers: encoders (BERT, RoBERTa), decoders (GPT-2, Llama-like) and ViT.

Blocks are found by probing: the longest `nn.ModuleList` of identical modules inside the backbone. Their exact inputs
(attention masks, rotary embeddings, position ids) are captured with a forward pre-hook on the first block that stops
the base model's forward, so no mask or position code is re-implemented.

Residual branches come from the block's normalisation layers, recorded in call order:

- pre-LN blocks (GPT-2, Llama, ViT): the stream is `s0 = x`, `s1 = s0 + r1` (the input of the second norm),
  `out = s1 + r2`, so `r_j = s_j - s_(j-1)` — exactly the attention and MLP branch outputs;
- post-LN blocks (BERT, RoBERTa): `h1 = LN1(x + r1)`, `out = LN2(h1 + r2)`; what is penalised is each branch before its
  LayerNorm, `r1 = (input of LN1) - x` and `r2 = (input of LN2) - h1`, the residual functions added to the stream.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel

from .base import BlockProbe, BlockState, ModelAdapter

FINAL_NORM_NAMES = ("ln_f", "norm", "layernorm", "final_layernorm", "final_layer_norm")


class _StopForward(Exception):
    """Raised by the capture hook to stop the base model's forward at the first block."""


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


def _block_list(backbone: nn.Module) -> nn.ModuleList | None:
    candidates = [
        module
        for module in backbone.modules()
        if isinstance(module, nn.ModuleList)
        and len(module) > 0
        and len({type(child) for child in module}) == 1
        and any(_is_norm(m) for m in module[0].modules())
    ]
    return max(candidates, key=len) if candidates else None


class HeadParts(nn.Module):
    """The task model's own head (final norm / pooler and classifier or LM head), copied for one module.

    Parts are stored under their path in the task model (dots replaced by `__`) so that a stage can be exported into
    the native truncated model by path.
    """

    def __init__(self, parts: dict[str, nn.Module], kind: str, task: str, architecture: str):
        super().__init__()
        self.kind, self.task, self.architecture = kind, task, architecture
        self.parts = nn.ModuleDict({path.replace(".", "__"): module for path, module in parts.items()})

    def named_parts(self) -> dict[str, nn.Module]:
        """Parts keyed by their path in the task model."""
        return {key.replace("__", "."): module for key, module in self.parts.items()}

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        modules = list(self.parts.values())
        if self.kind == "pooled":  # final norm?, pooler, dropout?, classifier
            for module in modules:
                hidden = module(hidden)
                if isinstance(hidden, tuple):
                    hidden = hidden[0]
            return hidden
        if self.kind == "first_token":  # final norm, classifier on the first token
            *norms, classifier = modules
            for norm in norms:
                hidden = norm(hidden)
            return classifier(hidden[:, 0])
        for module in modules:  # "sequence": final norm?, then a head applied to the whole sequence
            hidden = module(hidden)
        return hidden


class TransformerAdapter(ModelAdapter):
    """Adapter for transformers encoders, decoders and ViT (blocks in a `ModuleList`, normalisation layers inside)."""

    family = "transformer"
    head_kinds = ("native",)
    default_head = "native"
    context_input_names = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "pixel_values")

    def __init__(self, backbone: nn.Module, head_template: nn.Module | None = None):
        super().__init__(backbone, head_template)
        self.task = getattr(head_template, "task", "classification")
        self.architecture = getattr(head_template, "architecture", None)
        self.main_input_name = getattr(backbone, "main_input_name", "input_ids")

    @classmethod
    def can_cut(cls, model: nn.Module) -> bool:
        backbone = getattr(model, "base_model", model)
        return isinstance(backbone, PreTrainedModel) and _block_list(backbone) is not None

    @classmethod
    def find_blocks(cls, backbone: nn.Module) -> list[nn.Module]:
        blocks = _block_list(backbone)
        return list(blocks) if blocks is not None else []

    @classmethod
    def split_task_model(cls, model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
        backbone = getattr(model, "base_model", model)
        if backbone is model:
            return model, None
        prefix = model.base_model_prefix
        parts: dict[str, nn.Module] = {}
        final_norm = next((n for n in FINAL_NORM_NAMES if isinstance(getattr(backbone, n, None), nn.Module)), None)
        if final_norm is not None:
            parts[f"{prefix}.{final_norm}"] = getattr(backbone, final_norm)
        pooler = getattr(backbone, "pooler", None)
        if isinstance(pooler, nn.Module) and any(True for _ in pooler.parameters()):
            parts[f"{prefix}.pooler"] = pooler
        for name, child in model.named_children():
            if child is not backbone:
                parts[name] = child
        is_lm = isinstance(model, GenerationMixin) and model.get_output_embeddings() is not None
        if is_lm:
            kind = "sequence"
        elif f"{prefix}.pooler" in parts:
            kind = "pooled"
        elif final_norm is not None:
            kind = "first_token"
        else:
            kind = "sequence"
        template = HeadParts(
            {path: copy.deepcopy(module) for path, module in parts.items()},
            kind,
            "causal_lm" if is_lm else "classification",
            type(model).__name__,
        )
        return backbone, template

    def unused_backbone_modules(self) -> list[nn.Module]:
        names = (*FINAL_NORM_NAMES, "pooler")
        return [getattr(self.backbone, n) for n in names if isinstance(getattr(self.backbone, n, None), nn.Module)]

    # ------------------------------------------------------------------ forward

    def embed(self, **inputs: Any) -> BlockState:
        captured: dict[str, Any] = {}

        def capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured["args"], captured["kwargs"] = args, kwargs
            raise _StopForward

        inputs = {k: v for k, v in inputs.items() if v is not None}
        if self.main_input_name not in inputs:
            raise ValueError(f"This model needs `{self.main_input_name}` in its inputs.")
        handle = self.blocks[0].register_forward_pre_hook(capture, with_kwargs=True)
        try:
            self.backbone(**inputs, use_cache=False)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if "args" not in captured:
            raise ValueError("The base model's forward never reached its first block: cannot cut it.")
        args, kwargs = captured["args"], dict(captured["kwargs"])
        if args:
            hidden, rest = args[0], tuple(args[1:])
        else:
            hidden, rest = kwargs.pop("hidden_states"), ()
        for name in ("past_key_values", "past_key_value"):
            kwargs.pop(name, None)
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        return BlockState(hidden, rest, kwargs)

    def state_from_cache(self, hidden: torch.Tensor, **inputs: Any) -> BlockState:
        return self.embed(**inputs).with_hidden(hidden)

    def run_block(self, index: int, state: BlockState) -> tuple[BlockState, list[torch.Tensor]]:
        block = self.blocks[index]
        calls: list[tuple[torch.Tensor, torch.Tensor]] = []

        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            calls.append((args[0], output))

        handles = [m.register_forward_hook(record) for m in block.modules() if _is_norm(m)]
        try:
            output = block(state.hidden, *state.args, **state.kwargs)
        finally:
            for handle in handles:
                handle.remove()
        if isinstance(output, tuple):
            output = output[0]
        return state.with_hidden(output), self._branch_energies(state.hidden, output, calls)

    def _branch_energies(self, block_input: torch.Tensor, output: torch.Tensor, calls: list) -> list[torch.Tensor]:
        calls = [(norm_input, norm_output) for norm_input, norm_output in calls if norm_input.shape == output.shape]
        energy = self.difference_energy
        if not calls:
            return [energy(output, block_input)]
        if calls[0][0] is block_input:  # pre-LN: the first norm reads the block input itself
            stream = [block_input] + [norm_input for norm_input, _ in calls[1:]] + [output]
            return [energy(after, before) for before, after in zip(stream, stream[1:])]
        energies, residual = [], block_input
        for norm_input, norm_output in calls:
            if norm_input.shape == residual.shape:
                energies.append(energy(norm_input, residual))
                residual = norm_output
        return energies

    def build_head(self, kind: str, probe: BlockProbe, num_labels: int, pool_size: int, is_last: bool) -> nn.Module:
        if self.head_template is None:
            raise ValueError(
                "A bare transformers backbone has no head to copy: pass the task model (e.g. "
                "`BertForSequenceClassification`, `GPT2LMHeadModel`, `ViTForImageClassification`)."
            )
        return copy.deepcopy(self.head_template)

    def probe_inputs(self, image_size: int | None, batch_size: int = 2) -> dict[str, torch.Tensor]:
        config = self.backbone.config
        parameter = next(self.backbone.parameters())
        if self.main_input_name == "pixel_values":
            size = image_size or getattr(config, "image_size", 224)
            size = size if isinstance(size, int) else size[0]
            channels = getattr(config, "num_channels", 3)
            return {"pixel_values": torch.randn(batch_size, channels, size, size, device=parameter.device)}
        length = min(8, getattr(config, "max_position_embeddings", 8) or 8)
        input_ids = torch.randint(0, config.vocab_size, (batch_size, length), device=parameter.device)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}

    # ------------------------------------------------------------------ export

    def export_stage(self, num_blocks: int, head: nn.Module, num_labels: int) -> PreTrainedModel:
        from .base import task_model_from_config

        config = copy.deepcopy(self.backbone.config)
        config.architectures = [self.architecture]
        config.num_hidden_layers = num_blocks
        if hasattr(config, "tie_word_embeddings"):
            config.tie_word_embeddings = False
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = list(config.layer_types[:num_blocks])
        model = task_model_from_config(config)
        source = self.backbone.state_dict()
        target = model.base_model
        target.load_state_dict({name: source[name] for name in target.state_dict()}, strict=True)
        for path, module in head.named_parts().items():
            model.get_submodule(path).load_state_dict(module.state_dict())
        return model.eval()
