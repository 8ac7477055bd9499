"""FSDP2 (`torch.distributed.fsdp.fully_shard`) applied per module by [`TRGLTrainer`].

Turned on by the usual switches: `fsdp=True` / `fsdp="full_shard"` with `fsdp_config={"fsdp_version": 2}` in the
training arguments, or an accelerate FSDP config with `fsdp_version: 2` (`ACCELERATE_USE_FSDP=true`,
`FSDP_VERSION=2`). The trainer then shards the model itself and keeps accelerate and the Trainer from wrapping it again
(neither an FSDP wrap of the whole model nor a DDP wrap): every residual block, every module's extra modules, every
auxiliary head and every other module that holds parameters of its own (the stem: embeddings, the first
convolution) is one `fully_shard` unit, so a module's parameters are gathered only while that module runs and its
gradients are reduce-scattered as soon as its backward ends. The frozen prefix of sequential phases is sharded too
and runs without gradients.

What cannot work is refused with the fix, never replaced silently by DDP: FSDP1, CPU offload, FSDP's own activation
checkpointing, sharded checkpoints, weights left on the meta device by rank-0-only loading, the prefix cache
(`trgl_prefix_cache="always"`; `"auto"` recomputes the sharded prefix every step), Trainer checkpoints inside a phase
(`save_strategy` other than `"no"`) and LoRA bases. Every process starts from rank 0's weights. Stages,
`trgl-progress-NN` folders (with the multilap optimizers' states) and `save_pretrained` are written as full, unsharded
checkpoints by the main process after every process has taken part in gathering them; a resumed run loads them
before sharding (the optimizers' states are sharded again when their module's next lap begins).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..modeling.sharded import full_parameters, is_dtensor, is_sharded, reshard_all
from .processes import has_process_group, is_multiprocess, mean_over_processes

logger = logging.getLogger(__name__)

ENV_SWITCH = "ACCELERATE_USE_FSDP"


@dataclass(frozen=True)
class FSDPSettings:
    """How the trainer shards the model.

    Args:
        reshard_after_forward (`bool`): free a unit's gathered parameters after its forward (`"full_shard"`, the
            default) or keep them until its backward (`"shard_grad_op"`).
        source (`str`): which switch asked for FSDP, for messages.
    """

    reshard_after_forward: bool = True
    source: str = "the training arguments"


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes")


def _requested_options(args: Any) -> tuple[dict[str, Any], str] | None:
    """The FSDP options asked for by the training arguments or by accelerate's environment, and where from."""
    plugin_args = getattr(args, "fsdp_plugin_args", None)
    if getattr(args, "fsdp", None) and plugin_args:
        return dict(plugin_args), "`fsdp` in the training arguments"
    if not _truthy(os.environ.get(ENV_SWITCH, "false")):
        return None
    env = os.environ
    options = {
        "fsdp_version": int(env.get("FSDP_VERSION", "1")),
        "cpu_offload": _truthy(env.get("FSDP_OFFLOAD_PARAMS", "false")),
        "activation_checkpointing": _truthy(env.get("FSDP_ACTIVATION_CHECKPOINTING", "false")),
        "cpu_ram_efficient_loading": _truthy(env.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")),
        "state_dict_type": env.get("FSDP_STATE_DICT_TYPE", "FULL_STATE_DICT"),
        "reshard_after_forward": env.get("FSDP_RESHARD_AFTER_FORWARD", "true"),
    }
    return options, "the accelerate config (`distributed_type: FSDP`)"


def fsdp_settings(args: Any) -> FSDPSettings | None:
    """The FSDP2 sharding asked for by `args` (`fsdp`, `fsdp_config`) or by an accelerate FSDP config; `None` when
    FSDP is off.

    Raises:
        `ValueError`: a combination per-module FSDP2 cannot run, with the setting to change.
    """
    requested = _requested_options(args)
    if requested is None:
        return None
    options, source = requested
    fix = f"set it in {source}"
    if int(options.get("fsdp_version", 1)) != 2:
        raise ValueError(
            f"FSDP version {options.get('fsdp_version')} was asked for by {source}, but TRGLTrainer shards each "
            "module with FSDP2 only (FSDP1 cannot change which parameters train between phases): use "
            "`fsdp_version: 2` (`fsdp_config={'fsdp_version': 2}`, or `--fsdp_version 2` with accelerate)."
        )
    refused = {
        "cpu_offload": "CPU offload is not supported with TRGLTrainer's per-module FSDP2 (module-wise training "
        "already keeps only one module's activations alive): turn `cpu_offload` / `fsdp_offload_params` off",
        "activation_checkpointing": "FSDP's activation checkpointing is not supported with TRGLTrainer (each "
        "module's graph is already freed after its backward): turn `activation_checkpointing` off",
    }
    for name, message in refused.items():
        if _truthy(options.get(name, False)):
            raise ValueError(f"{message} ({fix}).")
    if "SHARDED" in str(options.get("state_dict_type", "FULL_STATE_DICT")).upper():
        raise ValueError(
            "TRGLTrainer writes stages and progress folders as full checkpoints loadable with `from_pretrained`: "
            f"`state_dict_type: SHARDED_STATE_DICT` is not supported, use FULL_STATE_DICT ({fix})."
        )
    if getattr(args, "trgl_prefix_cache", "auto") == "always":
        raise ValueError(
            "`trgl_prefix_cache='always'` cannot be used with FSDP: the frozen prefix is sharded, so its outputs "
            "are recomputed every step (every process runs it in step with the others). Use `'auto'` or `'never'`."
        )
    if str(getattr(args, "save_strategy", "no")) not in ("no", "SaveStrategy.NO"):
        raise ValueError(
            "With FSDP, Trainer checkpoints inside a phase are not supported (their optimizer state would be one "
            "process's shard): set `save_strategy='no'`. Every finished phase is still recorded as a full "
            "`trgl-progress-NN` checkpoint and `resume_from_checkpoint=True` resumes from the last one."
        )
    ignored = [name for name in ("auto_wrap_policy", "transformer_cls_names_to_wrap", "min_num_params")
               if name in options]  # fmt: skip
    if ignored:
        logger.info("FSDP: %s do not apply: TRGLTrainer makes every block, head and stem module a unit.", ignored)
    reshard = options.get("reshard_after_forward", True)
    return FSDPSettings(reshard_after_forward=_truthy(reshard) if not isinstance(reshard, bool) else reshard,
                        source=source)  # fmt: skip


@contextmanager
def hidden_from_accelerate(args: Any, settings: FSDPSettings | None) -> Iterator[None]:
    """While the Trainer builds its `Accelerator`: no FSDP plugin (from the arguments or the environment), so
    accelerate neither wraps the whole model in FSDP nor in DDP; the trainer applies FSDP2 per module itself."""
    if settings is None:
        yield
        return
    saved_args, saved_env = getattr(args, "fsdp_plugin_args", None), os.environ.pop(ENV_SWITCH, None)
    args.fsdp_plugin_args = None
    try:
        yield
    finally:
        args.fsdp_plugin_args = saved_args
        if saved_env is not None:
            os.environ[ENV_SWITCH] = saved_env


def check_fsdp_setup(settings: FSDPSettings | None, accelerator: Any, model: nn.Module) -> None:
    """Refuse FSDP without several processes, with an `Accelerator` that manages FSDP itself, with a LoRA base, or
    with tied decoder heads."""
    if settings is None:
        return
    if getattr(getattr(model, "config", None), "peft_config", None):
        raise ValueError(
            "LoRA bases are not supported with FSDP in TRGLTrainer: merge the adapters into the base "
            "(`merge_and_unload()`) before cutting it, or train without FSDP (DDP)."
        )
    if getattr(getattr(model, "config", None), "aux_head", None) == "tied":
        raise ValueError(
            "`aux_head='tied'` reads module 1's vocabulary matrix from every module's head, which FSDP shards per "
            "module: build the TRGL model with `TRGLConfig(aux_head='native')` for FSDP, or train without FSDP (DDP)."
        )
    if not has_process_group():
        raise ValueError(
            f"FSDP was asked for by {settings.source} but this is a single process without a process group: launch "
            "with `accelerate launch --num_processes N` or `torchrun --nproc_per_node N`, or turn FSDP off."
        )
    if getattr(accelerator.state, "fsdp_plugin", None) is not None:
        raise ValueError(
            "accelerate's state already holds an FSDP plugin (an `Accelerator` was created with FSDP before the "
            "trainer): TRGLTrainer shards each module itself; create the trainer before any other Accelerator."
        )


# ---------------------------------------------------------------------------------------------------- sharding


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules `shard_modules` makes `fully_shard` units, in the order they are sharded: every block and its
    extra modules, every auxiliary head, the backbone modules that never run, then every other module holding
    parameters of its own (the stem), innermost first."""
    adapter = model.adapter
    units: list[nn.Module] = []
    for index, block in enumerate(adapter.blocks):
        units += [block, *adapter.block_extras(index)]
    units += [*model.heads, *adapter.unused_backbone_modules()]
    covered = {id(m) for unit in units for m in unit.modules()}
    stem = [m for m in model.modules() if id(m) not in covered and any(True for _ in m.parameters(recurse=False))]
    return units + stem[::-1]


def shard_modules(model: nn.Module, settings: FSDPSettings, device: torch.device) -> None:
    """Before a phase: apply `fully_shard` to every unit of [`shard_units`] (the first time; every process first
    receives rank 0's parameters and buffers), then free every gathered parameter and set which parameters train
    again, on the sharded parameters. Each unit is its own FSDP root: the trainer runs modules, blocks and heads one
    by one, never the model's `forward` alone."""
    if is_sharded(model):
        reshard_all(model)  # a unit left gathered (`reshard_after_forward=False`) exposes its gathered parameters
        model.set_trainable_modules(model.trainable_modules)
        return
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    with torch.no_grad():  # every process starts from rank 0's weights, as DDP's wrap would give them
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if tensor.is_meta:
                raise ValueError(
                    f"{name} is on the meta device (loaded with `fsdp_cpu_ram_efficient_loading`, which leaves the "
                    "weights on rank 0 only): set `--fsdp_cpu_ram_efficient_loading false` / "
                    "`fsdp_config={'cpu_ram_efficient_loading': False}`; TRGLTrainer gives every process rank 0's "
                    "weights itself."
                )
            dist.broadcast(tensor.data, src=0)
    units = shard_units(model)
    for unit in units:
        fully_shard(unit, mesh=mesh, reshard_after_forward=settings.reshard_after_forward)
    unsharded = [name for name, param in model.named_parameters() if not is_dtensor(param)]
    if unsharded:
        raise ValueError(f"FSDP left parameters unsharded ({unsharded[:5]}): please report this model's config.")
    logger.info("FSDP2: %d units over %d processes (each block, head and stem module).", len(units),
                dist.get_world_size())  # fmt: skip


def gathered_for_saving(model: nn.Module, settings: FSDPSettings | None, writer: bool):
    """[`full_parameters`] when FSDP is on, else a context that does nothing."""
    return full_parameters(model, keep=writer) if settings is not None else nullcontext()


def full_lap_states(lap_states: dict[int, dict[str, Any]], settings: FSDPSettings | None, writer: bool) -> dict:
    """The multilap optimizer states to write in a progress folder: with FSDP, every process gathers each sharded
    state tensor (a collective) and the writing process keeps it whole, on CPU, so that a resumed run (which shards
    it again, [`shard_optimizer_state`]) reads every process's part; unchanged without FSDP."""
    if settings is None:
        return lap_states

    def gather(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: gather(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(gather(item) for item in value)
        if is_dtensor(value):
            full = value.full_tensor()
            return full.cpu() if writer else None
        return value

    return {index: gather(state) for index, state in sorted(lap_states.items())}


def shard_optimizer_state(optimizer: torch.optim.Optimizer, settings: FSDPSettings | None) -> None:
    """After a full optimizer state was loaded (a resumed multilap run): shard every state tensor shaped like its
    sharded parameter the way the parameter is sharded."""
    if settings is None:
        return
    from torch.distributed.tensor import distribute_tensor

    params = [param for group in optimizer.param_groups for param in group["params"] if is_dtensor(param)]
    for param in params:
        state = optimizer.state.get(param, {})
        for key, value in list(state.items()):
            if torch.is_tensor(value) and not is_dtensor(value) and value.shape == param.shape:
                value = value.to(param.to_local().device)
                state[key] = distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)


# ---------------------------------------------------------------------------------------------------- training


def average_task_losses(task_losses: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """The modules' task losses averaged over processes (FSDP averages the gradients itself; the method of
    multipliers needs the same losses on every process)."""
    if not task_losses or not is_multiprocess():
        return task_losses
    values = mean_over_processes(torch.stack([value.reshape(()).float() for value in task_losses.values()]))
    return dict(zip(task_losses, values))


def local_norm(norm: torch.Tensor) -> torch.Tensor:
    """A gradient norm as a plain tensor (`clip_grad_norm_` over DTensor gradients returns the global norm as a
    DTensor)."""
    return norm.full_tensor() if is_dtensor(norm) else norm


__all__ = [
    "FSDPSettings",
    "average_task_losses",
    "check_fsdp_setup",
    "fsdp_settings",
    "full_lap_states",
    "gathered_for_saving",
    "hidden_from_accelerate",
    "local_norm",
    "shard_modules",
    "shard_optimizer_state",
    "shard_units",
]
