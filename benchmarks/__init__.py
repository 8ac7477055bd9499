"""The benchmarks of trgl_hf: run each as a module from the repository root, e.g. `python -m benchmarks.memory_speed`.

Importing the package first makes the Hugging Face libraries work offline and quietly, before any of them loads.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
