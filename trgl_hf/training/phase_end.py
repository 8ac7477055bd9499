"""What happens when a phase's loop ends, in an order a killed run can resume from: the phase's modules are evaluated,
the phase is recorded (weights first, then the state), then the stages it finished are written (and pushed)."""

from __future__ import annotations

import logging

from transformers import Trainer

from ..distributed.processes import is_multiprocess
from ..export.stage_folders import stage_dirname, stage_folder
from .guards import finite_metrics
from .phases import Phase
from .run_callbacks import shift_entry
from .run_markers import write_marker

logger = logging.getLogger(__name__)


def finish_phase(trainer: Trainer, phase: Phase, steps: int) -> None:
    """Evaluate, record the phase as completed, write its stages, then tell the callbacks (`on_phase_end`)."""
    run, model, args = trainer.run, trainer.model, trainer.args
    trainer.check_finite(phase.name)  # before anything of the phase is evaluated or recorded
    trainer.strategy.broadcast_buffers(model)
    metrics = phase_end_evaluation(trainer) if trainer.eval_dataset is not None and phase.final_modules else {}
    for stage in (index + 1 for index in phase.final_modules):
        prefix = f"{trainer.selection_prefix}module_{stage}_"
        found = {name[len(prefix) :]: value for name, value in metrics.items() if name.startswith(prefix)}
        trainer.stage_metrics[stage] = finite_metrics(found, stage)
    model.config.trained_modules = phase.evaluated_modules
    state = run.state
    state.stage_metrics, state.phase_steps[phase.name] = dict(trainer.stage_metrics), steps
    trainer.lap_optimizers.keep(phase, trainer.optimizer, trainer.lr_scheduler)
    state.lap_states = trainer.strategy.full_lap_states(trainer.lap_optimizers.states, writer=args.should_save)
    state.log_history = run.log_history + [
        {**shift_entry(entry, run.step_offset, run.epoch_offset), "trgl_phase": phase.name}
        for entry in trainer.state.log_history
    ]
    with trainer.strategy.gathered_for_saving(model, writer=args.should_save):  # FSDP: full weights to write
        state.complete_phase(phase, model, by_module=trainer.strategy.fsdp is None)
        if args.should_save:
            write_marker(run.root, run.step_offset + steps, run.fingerprint, f"{phase.name} finished",
                         source=run.root / state.progress)  # fmt: skip
        write_pending_stages(trainer, final=phase == run.phases[-1])
    trainer.accelerator.wait_for_everyone()
    handler = trainer.callback_handler
    if handler.position is not None:
        handler.run_event("on_phase_end", args, handler.position.state(trainer.state), trainer.control, phase=phase,
                          metrics=metrics)  # fmt: skip


def phase_end_evaluation(trainer: Trainer) -> dict[str, float]:
    """The metrics of the phase's trained modules: those of the evaluation the loop ran at the phase's last step when
    there was one (one process, and no best checkpoint loaded since: the weights are those it scored), else a new
    `evaluate()`."""
    best_key, state = f"{trainer.selection_prefix}best_module", trainer.state
    ran = [e for e in state.log_history[-2:] if best_key in e and e.get("step") == state.global_step]
    best_loaded = trainer.args.load_best_model_at_end and state.best_model_checkpoint is not None
    if ran and not best_loaded and not is_multiprocess():
        metrics = {name: value for name, value in ran[-1].items() if name.startswith("eval_")}
        trainer.best_module = int(metrics[best_key])
        return metrics
    return trainer.evaluate()


def write_pending_stages(trainer: Trainer, final: bool) -> None:
    """Export the stages recorded as pending (from the weights now in the model) and record their checksums."""
    run, args, num_stages = trainer.run, trainer.args, trainer.model.num_modules
    for stage in list(run.state.pending):
        written = args.saves_stage(stage, num_stages)
        folder = stage_folder(run.root, stage)
        if args.should_save and written:
            trainer.save_stage(stage, folder)
            if run.pusher is not None:
                run.pusher.submit_stage(stage, folder, final and stage == max(run.state.pending))
        if written:
            run.state.record_stage(stage)
        else:
            run.state.pending.remove(stage)
            run.state.save()


def resume_stages(trainer: Trainer) -> None:
    """On resume: write the stages left pending by an interrupted transition, export again any recorded stage whose
    files were damaged (its modules are final in the restored weights; an intact stage is never rewritten), and push
    again what the killed run may not have pushed (an unchanged file is a no-op on the Hub)."""
    run, state = trainer.run, trainer.run.state
    if trainer.args.saves_any_stage():
        damaged = state.damaged_stages()
        for stage in damaged:
            logger.warning(
                "%s is damaged or missing: exporting it again from the run's weights.", stage_dirname(stage)
            )
            state.stages.pop(stage)
        state.pending = sorted({*state.pending, *damaged})
        if state.pending:
            done = [index for p in run.phases if p.name in state.completed for index in p.modules]
            trainer.model.config.trained_modules = max(done) + 1 if done else 0
            write_pending_stages(trainer, final=len(state.completed) == len(run.phases))
    if run.pusher is not None:
        for stage in sorted(set(state.stages) - set(state.pending)):
            run.pusher.submit_stage(stage, stage_folder(run.root, stage), final=stage == trainer.model.num_modules)
