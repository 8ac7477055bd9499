"""The state of a TRGL run in its `output_dir`: which phases are finished, the weights they left, their metrics.

- `trgl_state.json`: the phases of the run, those completed, the stage metrics and the run's fingerprint;
- `trgl-progress/`: the whole TRGL model after the last completed phase (until the run ends);
- `phases/<phase>/checkpoint-*`: the Trainer checkpoints of the phase in progress.

Files are replaced atomically (written aside, then renamed), so a killed run leaves either the old or the new state.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .checkpointing import atomic_directory, write_json
from .guards import check_weight_folder
from .phases import PHASES_DIR, Phase

STATE_FILE = "trgl_state.json"
PROGRESS_DIR = "trgl-progress"


def load_run_state(root: Path, phases: list[Phase], model: Any) -> dict[str, Any]:
    """Read the state of the run in `root` and restore the model's weights after its last completed phase.

    Raises:
        `ValueError`: the state belongs to a run with other phases.
    """
    state_path = root / STATE_FILE
    if not state_path.exists():
        return {"completed_phases": []}
    state = json.loads(state_path.read_text())
    expected = [p.name for p in phases]
    if state.get("phases") != expected:
        raise ValueError(
            f"{state_path} belongs to a run with phases {state.get('phases')}, not {expected}: resume with the "
            "same `trgl_mode`, `trgl_laps` and number of modules, or use a new `output_dir`."
        )
    if state["completed_phases"] and (root / PROGRESS_DIR).exists():
        check_weight_folder(root / PROGRESS_DIR)
        restored = type(model).from_pretrained(root / PROGRESS_DIR)
        model.load_state_dict(restored.state_dict())
    return state


def save_run_state(root: Path, state: dict[str, Any], phases: list[Phase], phase: Phase, model: Any, fingerprint: str):
    """Record `phase` as completed: the model's weights (unless the run is over), then the state file, then the
    phase's checkpoints are removed."""
    if phase != phases[-1]:
        with atomic_directory(root / PROGRESS_DIR) as staging:
            model.save_pretrained(staging)
    else:
        shutil.rmtree(root / PROGRESS_DIR, ignore_errors=True)
    write_json(root / STATE_FILE, {**state, "phases": [p.name for p in phases], "fingerprint": fingerprint})
    shutil.rmtree(phase.output_dir(root), ignore_errors=True)
    if root.joinpath(PHASES_DIR).exists() and not any(root.joinpath(PHASES_DIR).iterdir()):
        root.joinpath(PHASES_DIR).rmdir()


__all__ = ["PROGRESS_DIR", "STATE_FILE", "load_run_state", "save_run_state"]
