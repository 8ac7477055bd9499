"""What a trainer publishes: the stage folders, the chosen stage as `save_model` writes it, the run's card and the
pushes to the Hub, as methods of [`TRGLTrainer`] (the files themselves are written by `trgl_hf.training.run_outputs`
and `trgl_hf.hub`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi

from ..export.model_cards import module_table
from ..hub.push import HubPushError, push_run_card, push_run_stages
from .guards import check_hub_credentials
from .run_outputs import run_card_files, run_facts, write_chosen_stage, write_run_card, write_stage
from .selection import last_selection_evaluation


class StagePublishingMixin:
    """`save_stage`, `save_model`, `create_model_card` and the Hub methods of [`TRGLTrainer`]."""

    stage_metrics: dict[int, dict[str, float]]
    hub_api: HfApi | None

    def save_run_results(self, metrics: dict[str, float]) -> None:
        """What `Trainer` leaves in `output_dir` after training, for the whole run: `trainer_state.json`,
        `train_results.json`, `eval_results.json` (the last evaluation of the set that chooses the best module),
        `all_results.json` and the run's card (pushed with the `"subfolder"` strategy)."""
        run = self.run
        self.state.save_to_json(str(run.root / "trainer_state.json"))
        self.save_metrics("train", metrics)
        evaluation = last_selection_evaluation(run.log_history, self.selection_prefix)
        if evaluation is not None:
            self.save_metrics("eval", {k: v for k, v in evaluation.items() if k.startswith("eval_")})
        self.create_model_card()
        if run.pusher is not None and self.args.trgl_hub_strategy == "subfolder":
            run.pusher.submit_run_card(run_card_files(run.root))

    def save_stage(self, stage: int, directory: str | os.PathLike) -> Path:
        """Export modules 1..`stage` with head `stage` and write them, with the processor given to the trainer and a
        model card, to `directory`."""
        facts = {**self.run_facts(), "metrics": self.stage_metrics.get(stage, {})}
        return write_stage(self.model, stage, directory, facts, processor=self.processing_class)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Write the chosen stage to `output_dir` (default `args.output_dir`) as `Trainer.save_model` writes a model:
        modules 1..k with head k, where k is the best module of the last `evaluate()` (the last module when none ran),
        loadable with the task's `AutoModelFor*` class and `pipeline(model=output_dir)`, with the processor and
        `trgl_stage.json`. In the run's own folder the run's model card is kept; the run (state, stages, resume
        points) is untouched. The Trainer's own checkpoints (`_internal_call`) hold the whole TRGL model, which resume
        reads."""
        if _internal_call:
            super().save_model(output_dir, _internal_call=True)
            return
        stage = self.best_module or self.model.num_modules
        with self.strategy.gathered_for_saving(self.model, writer=self.args.should_save):
            if self.args.should_save:
                write_chosen_stage(
                    Path(output_dir or self.args.output_dir), lambda folder: self.save_stage(stage, folder)
                )
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub:  # as Trainer.save_model does
            self.push_to_hub()

    def run_facts(self) -> dict[str, Any]:
        """What the stages' `trgl_stage.json` and the model cards record about the run."""
        fingerprint = self.run.fingerprint if self.run is not None else None
        return run_facts(self.model, self.args, self.train_dataset, self.stage_metrics, fingerprint)

    def create_model_card(self, *args: Any, **kwargs: Any) -> Path | None:
        """Write the run's card, `output_dir/README.md`: settings, every module's metrics with a plot
        (`module_metrics.svg`) and how to load each stage (main process only; Trainer's arguments are ignored)."""
        if not self.is_world_process_zero():
            return None
        facts = {**self.run_facts(), "num_stages": self.model.num_modules, "global_step": self.state.global_step}
        return write_run_card(Path(self.args.output_dir), facts, self.stage_metrics, self.model, self.args)

    @property
    def hub_repo_id(self) -> str:
        """The repository stages are pushed to: `hub_model_id`, else the name of `output_dir`."""
        return self.args.hub_model_id or Path(self.args.output_dir).name

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Create the Hub repository stages will be pushed to (through `hub_api`)."""
        check_hub_credentials(self.args, self.hub_api)
        if not self.is_world_process_zero():
            return
        api = self.hub_api or HfApi(token=token or self.args.hub_token)
        try:
            api.create_repo(self.hub_repo_id, exist_ok=True, private=private or self.args.hub_private_repo)
        except Exception as error:
            raise HubPushError(None, self.hub_repo_id, "repository", self.args.output_dir, error) from error

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Intermediate Trainer checkpoints are not pushed: finished stages are."""

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, **kwargs: Any):
        """Push every finished stage of the run in `output_dir` (see `trgl_hub_strategy`) now, and with the
        `"subfolder"` strategy the run's card to the root of `main`; returns {stage: target}.

        Raises:
            [`HubPushError`]: if a push fails (the local run is untouched; calling again is safe).
        """
        token = kwargs.get("token") or self.args.hub_token
        pushed = push_run_stages(
            self.args.output_dir, self.hub_repo_id, strategy=self.args.trgl_hub_strategy, api=self.hub_api,
            token=token, private=self.args.hub_private_repo,
        )  # fmt: skip
        if self.create_model_card() is not None and self.args.trgl_hub_strategy == "subfolder":
            push_run_card(run_card_files(Path(self.args.output_dir)), self.hub_repo_id, api=self.hub_api, token=token)
        return pushed

    def module_table(self) -> str:
        """Markdown table of the evaluation metrics of every finished stage."""
        return module_table(self.stage_metrics)
