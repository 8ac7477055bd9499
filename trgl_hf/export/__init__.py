"""What a run writes to disk: stage folders and atomic directories (`checkpointing`), the per-module weight files
(`module_files`) and the model cards (`model_cards`)."""
