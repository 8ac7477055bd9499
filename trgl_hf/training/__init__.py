"""Training a TRGL model: the arguments, `TRGLTrainer`, its phases, run state, lock and markers, the prefix cache and
offload, the checks run before training, metrics, and the private transformers / accelerate APIs it needs
(`hf_internals`)."""
