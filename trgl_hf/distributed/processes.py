"""How many processes train, for the training side: the answers are defined once, in `trgl_hf.modeling.processes`
(the model side asks them too, and a saved model's remote code carries only `modeling/` and `models/`)."""

from __future__ import annotations

from ..modeling.processes import has_process_group, is_multiprocess, mean_over_processes

__all__ = ["has_process_group", "is_multiprocess", "mean_over_processes"]
