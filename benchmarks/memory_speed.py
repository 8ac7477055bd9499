"""Peak training memory and time per step: end-to-end vs gradient checkpointing vs TRGL (parallel, sequential,
multi-lap), on the same model and batch.

    python -m benchmarks.memory_speed            # CIFAR ResNet-110, batch 256 (+ a batch-128 subset), K = 2..16
    python -m benchmarks.memory_speed --quick    # smoke mode: ResNet-8, batch 8, K = 2, temporary output (seconds)

Memory: one training step (driven through `TRGLModel.phase` / `iter_modules`, see `benchmarks/common/steps.py`) under
the exact allocator trace of `benchmarks/common/memory.py`. Time: `TRGLTrainer.train()` (parallel, sequential with
and without the prefix cache) and `transformers.Trainer.train()` (end-to-end; checkpointing through a `Trainer`
whose loss runs the checkpointed segments) on the same model and batch, step times from a Trainer callback.

Outputs `memory_speed.json`, `memory_speed.md` and `memory_speed.png` in `--out-dir` (default `benchmarks/results`; a
temporary folder with `--quick`). `--render-only JSON` rewrites the Markdown and plot of an existing run.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import env, memory, models, steps, timing
from benchmarks.common.env import log, mib
from benchmarks.reports import memory_speed as report
from trgl_hf.modeling.splitting import equal_split


class Bench:
    """Runs the configurations; `records` (one per mode, split and K) and `module_records` (sequential modules)."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.depth = args, args.depth
        self.records: list[dict[str, Any]] = []
        self.module_records: list[dict[str, Any]] = []
        self.checks: dict[str, Any] = {}
        self.diagnostics: dict[str, Any] = {}
        self.scratch = Path(tempfile.mkdtemp(prefix="trgl_memory_speed_trainer_"))
        self.runs = 0

    # ------------------------------------------------------------------ timing through the trainers

    def time(self, model, x, y, timed: int, trgl_mode: str | None = None, split=None, cache="always"):
        """Step times (per phase) of `timed` steps after one warm-up step, from `Trainer.train()`."""
        if timed <= 0:
            return None
        self.runs += 1
        args = timing.training_args(
            self.scratch / f"run-{self.runs}", timed + 1, len(y), trgl_mode=trgl_mode, prefix_cache=cache
        )
        trainer = timing.make_trainer(model, args, timing.FixedBatch({"pixel_values": x}, y), split=split)
        result = timing.timed_train(trainer, warmup=1)
        del trainer
        gc.collect()
        return result["phases"]

    @staticmethod
    def _times(summary: dict[str, Any], phase: dict[str, list[float]] | None) -> dict[str, Any]:
        phase = phase or {"wall_s": [], "cpu_s": []}
        summary["step_times_s"] = [round(t, 4) for t in phase["wall_s"]]
        summary["step_time_s"] = timing.summary(phase["wall_s"])
        summary["step_cpu_times_s"] = [round(t, 4) for t in phase["cpu_s"]]
        summary["step_cpu_time_s"] = timing.summary(phase["cpu_s"])
        return summary

    # ------------------------------------------------------------------ configurations

    def run_e2e(self, batch_size: int, timed: int, cross_check: bool) -> dict[str, Any]:
        x, y = models.random_images(batch_size)
        model = models.build_resnet(self.depth)
        optimizer = models.make_sgd(model.parameters())
        step = steps.e2e_step_fn(model, optimizer, {"pixel_values": x}, y)
        summary = memory.measure_step(step, model, optimizer, [x, y])
        if cross_check:
            self.checks[f"e2e_batch{batch_size}"] = steps.cross_check_e2e(model, optimizer, x, y, summary)
        del optimizer, step
        phases = self.time(model, x, y, timed)
        summary = self._times(summary, phases[0] if phases else None)
        record = self._record(batch_size, "e2e", None, 1, None, summary, memory.storage_bytes(model.parameters()))
        log(f"B={batch_size} e2e: peak {mib(record['peak_bytes'])} MiB, CPU {record['step_cpu_time_s']} s/step")
        return record

    def run_checkpointed(self, batch_size: int, num_modules: int, policy: str, split: list[int], timed: int):
        x, y = models.random_images(batch_size)
        model = models.build_resnet(self.depth)
        optimizer = models.make_sgd(model.parameters())
        summary = memory.measure_step(
            steps.checkpointed_step_fn(model, optimizer, x, y, split), model, optimizer, [x, y]
        )
        del optimizer
        phases = self.time(model, x, y, timed, split=split)
        summary = self._times(summary, phases[0] if phases else None)
        trainable = memory.storage_bytes(model.parameters())
        record = self._record(batch_size, "checkpointing", policy, num_modules, split, summary, trainable)
        log(f"B={batch_size} checkpointing {policy} K={num_modules}: peak {mib(record['peak_bytes'])} MiB")
        return record

    def run_trgl(
        self,
        batch_size,
        num_modules,
        policy,
        *,
        parallel_timed,
        sequential_timed,
        multilap,
        modes=("sequential", "parallel"),
    ) -> None:
        x, y = models.random_images(batch_size)
        model = models.build_trgl_resnet(self.depth, num_modules, policy)
        split = list(model.config.split)
        weights = memory.storage_bytes(list(model.parameters()) + list(model.buffers()))
        per_module: list[dict[str, Any]] = []
        if "sequential" in modes:
            per_module = self._sequential(model, x, y, lap=1)
            clone_bytes = steps.branch_output_bytes(model, batch_size)
            laps = [per_module] + ([self._sequential(model, x, y, lap=2, with_uncached=False)] if multilap else [])
            timed_here = sequential_timed and max(
                sequential_timed, math.ceil(self.args.min_sequential_samples / num_modules)
            )
            for cached in (True, False):
                phases = self.time(
                    model, x, y, timed_here, trgl_mode="sequential", cache="always" if cached else "never"
                )
                for entry, phase in zip(per_module, phases or [None] * num_modules):
                    self._times(entry["cached" if cached else "uncached"], phase)
            for lap_index, lap in enumerate(laps, start=1):
                for entry in lap:
                    entry["transport_clone_bytes"] = clone_bytes[entry["module"] - 1]
                    self.module_records.append(
                        {"batch_size": batch_size, "policy": policy, "K": num_modules, "lap": lap_index, **entry}
                    )
            for key, mode in (("cached", "sequential"), ("uncached", "sequential_no_cache")):
                summary = report.worst_module(per_module, key)
                floor = max(self._module_floor(weights, entry, key == "cached", x, y) for entry in per_module)
                trainable = max(entry["trainable_bytes"] for entry in per_module)
                record = self._record(batch_size, mode, policy, num_modules, split, summary, trainable, floor)
                log(
                    f"B={batch_size} {mode} {policy} K={num_modules}: peak {mib(record['peak_bytes'])} MiB "
                    f"(module {record['peak_module']}), floor x{record['ratio_to_floor']}"
                )
            if multilap:
                summary = report.worst_module(laps[1], "cached", timed=False)
                summary["note"] = "lap 2 of multi-lap sequential training (fresh optimizer per module, cache rebuilt)"
                floor = max(self._module_floor(weights, entry, True, x, y) for entry in per_module)
                trainable = max(entry["trainable_bytes"] for entry in laps[1])
                record = self._record(batch_size, "multilap", policy, num_modules, split, summary, trainable, floor)
                log(f"B={batch_size} multilap {policy} K={num_modules}: peak {mib(record['peak_bytes'])} MiB")
        if "parallel" in modes:
            with model.phase(range(num_modules)):
                params = [p for p in model.parameters() if p.requires_grad]
                optimizer = models.make_sgd(params)
                step = steps.trgl_step_fn(model, optimizer, {"pixel_values": x}, y)
                summary = memory.measure_step(step, model, optimizer, [x, y])
                trainable = memory.storage_bytes(params)
                del optimizer, step, params
            phases = self.time(model, x, y, parallel_timed, trgl_mode="parallel")
            summary = self._times(summary, phases[0] if phases else None)
            floor = None
            if per_module:
                largest = max(e["activation_bytes"] + (e["input_bytes"] if e["module"] > 1 else 0) for e in per_module)
                floor = weights + 2 * trainable + memory.storage_bytes([x]) + memory.storage_bytes([y]) + largest
            record = self._record(batch_size, "parallel", policy, num_modules, split, summary, trainable, floor)
            log(
                f"B={batch_size} parallel {policy} K={num_modules}: peak {mib(record['peak_bytes'])} MiB, "
                f"floor x{record['ratio_to_floor']}"
            )
        del model
        gc.collect()

    @staticmethod
    def _module_floor(weights: int, entry: dict[str, Any], cached: bool, x, y) -> int:
        """Weights (all modules) + gradients and optimizer state of module k + its inputs + its activations."""
        data = memory.storage_bytes([y]) + entry["input_bytes"]
        if not cached and entry["module"] > 1:
            data += memory.storage_bytes([x])
        return weights + 2 * entry["trainable_bytes"] + data + entry["activation_bytes"]

    def _module_memory(self, model, index: int, x, y, cached) -> dict[str, Any]:
        """Traced step of module `index` alone (frozen prefix), from `cached` prefix outputs or from the images."""
        with model.phase([index], cached_from=index if cached is not None else None):
            params = list(model.module_parameters(index))
            optimizer = models.make_sgd(params)
            step = steps.trgl_step_fn(model, optimizer, {"pixel_values": x}, y, cached=cached)
            summary = memory.measure_step(step, model, optimizer, [x, y] if cached is None else [cached, y])
            del optimizer, step
        return summary

    def _sequential(self, model, x, y, lap: int, with_uncached: bool = True) -> list[dict[str, Any]]:
        """Memory of each module k trained alone (frozen prefix), with the prefix cache and without it."""
        entries = []
        for index in range(model.num_modules):
            params = model.module_parameters(index)
            entry: dict[str, Any] = {
                "module": index + 1,
                "blocks": model.config.split[index],
                "trainable_bytes": memory.storage_bytes(params),
            }
            cached = steps.prefix_output(model, {"pixel_values": x}, index) if index else None
            entry["input_bytes"] = memory.storage_bytes([x if cached is None else cached])
            entry["cached"] = self._module_memory(model, index, x, y, cached)
            entry["activation_bytes"] = entry["cached"]["activation_nongrad_peak_bytes"]
            if with_uncached:
                entry["uncached"] = (
                    dict(entry["cached"]) if index == 0 else self._module_memory(model, index, x, y, None)
                )
            entries.append(entry)
            log(
                f"  lap {lap} module {index + 1}/{model.num_modules}: cached peak {mib(entry['cached']['peak_bytes'])}"
                " MiB" + (f", uncached {mib(entry['uncached']['peak_bytes'])} MiB" if with_uncached else "")
            )
            del cached
            gc.collect()
        return entries

    def transport_diagnostic(self, batch_size: int, num_modules: int, policy: str) -> None:
        """The step of the module that sets the sequential peak, with the transport term trained (`trgl`) and with
        `use_transport=False` (VanGL: energies logged without a graph), both through the public API."""
        record = report.find(
            self.records, mode="sequential", split_policy=policy, K=num_modules, batch_size=batch_size
        )
        e2e = report.find(self.records, mode="e2e", batch_size=batch_size)
        if record is None:
            return
        index = record["peak_module"] - 1
        x, y = models.random_images(batch_size)
        result: dict[str, Any] = {
            "batch_size": batch_size,
            "K": num_modules,
            "split_policy": policy,
            "module": index + 1,
        }
        for key, use_transport in (("trgl", True), ("vangl_use_transport_false", False)):
            model = models.build_trgl_resnet(self.depth, num_modules, policy, use_transport=use_transport)
            cached = steps.prefix_output(model, {"pixel_values": x}, index) if index else None
            summary = self._module_memory(model, index, x, y, cached)
            result[key] = {
                "peak_bytes": summary["peak_bytes"],
                "activation_bytes": summary["activation_nongrad_peak_bytes"],
                "ratio_to_e2e": round(summary["peak_bytes"] / e2e["peak_bytes"], 3) if e2e else None,
            }
            log(
                f"transport diagnostic {policy} K={num_modules} module {index + 1} {key}: "
                f"{mib(summary['peak_bytes'])} MiB"
            )
            del model, cached
            gc.collect()
        result["transport_term_bytes"] = (
            result["trgl"]["peak_bytes"] - result["vangl_use_transport_false"]["peak_bytes"]
        )
        self.diagnostics[f"transport_term_sequential_{policy}_K{num_modules}_batch{batch_size}"] = result

    def interleaved_timing(self, batch_size: int, ks: list[int], rounds: int) -> None:
        """E2E, checkpointing and TRGL parallel (equal split; conv and linear heads) timed in interleaved rounds: each
        round trains every configuration for 2 steps (`Trainer.train()`; the second step is timed), in a rotated
        order, so that a change of the machine's load hits every configuration alike. Ratios: per round, to E2E."""
        x, y = models.random_images(batch_size)
        num_blocks = len(models.resnet_blocks(models.build_resnet(self.depth)))
        configs: list[tuple[str, Any, dict[str, Any]]] = [("e2e", models.build_resnet(self.depth), {})]
        for k in ks:
            split = equal_split(num_blocks, k)
            configs.append((f"checkpointing_equal_K{k}", models.build_resnet(self.depth), {"split": split}))
            for head, name in (("conv", f"parallel_equal_K{k}"), ("linear", f"parallel_linear_head_equal_K{k}")):
                model = models.build_trgl_resnet(self.depth, k, "equal", aux_head=head)
                configs.append((name, model, {"trgl_mode": "parallel"}))
        times = {name: {"wall": [], "cpu": []} for name, _, _ in configs}
        ratios = {name: {"wall": [], "cpu": []} for name, _, _ in configs}
        for round_index in range(rounds):
            shift = round_index % len(configs)
            this_round = {}
            for name, model, kwargs in configs[shift:] + configs[:shift]:
                phase = self.time(model, x, y, 1, **kwargs)[0]
                this_round[name] = (phase["wall_s"][0], phase["cpu_s"][0])
                times[name]["wall"].append(this_round[name][0])
                times[name]["cpu"].append(this_round[name][1])
            for name, (wall, cpu) in this_round.items():
                ratios[name]["wall"].append(wall / this_round["e2e"][0])
                ratios[name]["cpu"].append(cpu / this_round["e2e"][1])
            log(
                f"interleaved timing round {round_index + 1}/{rounds}: "
                + ", ".join(f"{name} {cpu:.2f}s CPU" for name, (_, cpu) in this_round.items())
            )
        self.diagnostics[f"interleaved_timing_batch{batch_size}"] = report.interleaved_summary(
            batch_size, rounds, times, ratios
        )
        del configs
        gc.collect()

    def _record(self, batch_size, mode, policy, num_modules, split, summary, trainable_bytes, floor_bytes=None):
        record = {
            "batch_size": batch_size,
            "mode": mode,
            "split_policy": policy,
            "K": num_modules,
            "split": split,
            **summary,
            "trainable_param_bytes": trainable_bytes,
            "floor_bytes": floor_bytes,
        }
        record["ratio_to_floor"] = round(record["peak_bytes"] / floor_bytes, 3) if floor_bytes else None
        self.records.append(record)
        return record


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode: ResNet-8, batch 8, K = 2")
    parser.add_argument("--out-dir", type=Path, default=None, help="default benchmarks/results (quick: a temp dir)")
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="first = main table")
    parser.add_argument("--ks", type=int, nargs="+", default=None)
    parser.add_argument("--policies", nargs="+", default=["equal", "balanced"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--no-extra", action="store_true", help="skip the transport-term and interleaved checks")
    parser.add_argument(
        "--render-only",
        type=Path,
        default=None,
        metavar="JSON",
        help="rewrite the Markdown and the plot from an existing memory_speed.json",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.depth = args.depth or (8 if quick else 110)
    args.batch_sizes = args.batch_sizes or ([8] if quick else [256, 128])
    args.ks = args.ks or ([2] if quick else [2, 4, 8, 16])
    args.timed = {"e2e": 1 if quick else 3, "checkpointing": 1, "parallel": 1 if quick else 2, "sequential": 1}
    args.min_sequential_samples = 2 if quick else 4
    args.multilap = [("balanced", args.ks[-1] if quick else 4)]
    args.timing_ks, args.timing_rounds = (args.ks[-1:], 2) if quick else ([4, 16], 3)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.render_only is not None:
        result = json.loads(args.render_only.read_text())
        print(report.write_outputs(result, args.out_dir or args.render_only.parent, plot=not args.no_plot))
        return result
    env.setup(args.threads, freeze_gc=True)
    out_dir = env.out_dir(args.out_dir, args.quick, "memory_speed")
    command = env.command_line("memory_speed", argv)
    log(f"{command}: depth {args.depth}, batches {args.batch_sizes}, K {args.ks}, out {out_dir}")
    validation = memory.validate_measurement()
    log(f"validation: {json.dumps({k: v['ok'] for k, v in validation.items()})}")
    bench = Bench(args)
    main_batch, *other_batches = args.batch_sizes
    num_blocks = len(models.resnet_blocks(models.build_resnet(args.depth)))
    bench.run_e2e(main_batch, args.timed["e2e"], cross_check=True)
    for policy in args.policies:
        for k in args.ks:
            bench.run_trgl(
                main_batch,
                k,
                policy,
                parallel_timed=args.timed["parallel"],
                sequential_timed=args.timed["sequential"],
                multilap=(policy, k) in args.multilap,
            )
            split = equal_split(num_blocks, k) if policy == "equal" else models.module_split(args.depth, k, policy)
            bench.run_checkpointed(main_batch, k, policy, split, args.timed["checkpointing"])
    if not args.no_extra:
        policy = "balanced" if "balanced" in args.policies else args.policies[0]
        bench.transport_diagnostic(main_batch, 4 if 4 in args.ks else args.ks[-1], policy)
        bench.interleaved_timing(main_batch, [k for k in args.timing_ks if k in args.ks], args.timing_rounds)
    for batch_size in other_batches:  # memory-only subset: ratios hardly depend on the batch
        bench.run_e2e(batch_size, 0, cross_check=False)
        k_subset = [k for k in (4, 16) if k in args.ks] or args.ks[-1:]
        for k in k_subset:
            bench.run_trgl(
                batch_size,
                k,
                "balanced",
                parallel_timed=0,
                sequential_timed=0,
                multilap=False,
                modes=("sequential", "parallel") if k == k_subset[0] else ("parallel",),
            )
        for policy in ("equal", "balanced"):
            split = (
                equal_split(num_blocks, k_subset[0])
                if policy == "equal"
                else models.module_split(args.depth, k_subset[0], policy)
            )
            bench.run_checkpointed(batch_size, k_subset[0], policy, split, 0)
    result = report.assemble(args, command, bench, validation, num_blocks)
    text = report.write_outputs(result, out_dir, plot=not args.no_plot)
    log(f"wrote {out_dir}")
    print(text)
    return result


if __name__ == "__main__":
    main()
