"""Mixture-of-experts decoders of the registry's conformance tests (`test_registry.py`), one row per task class:
class name -> (config class, config kwargs, ground-truth branch modules per block[, how branches combine]).

Ground truth: the output of each named submodule (first element of a tuple) is exactly the tensor its branch adds
to the residual stream; "sum" adds them into one stream update (parallel attention + MLP).
"""

MIXTURES_CASES = {}  # fmt: skip
