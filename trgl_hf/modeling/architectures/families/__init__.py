"""The registry's entries, one file per kind of model: text encoders, decoders, vision. Their order is the support
table's."""

from .decoders import DECODERS
from .encoders import ENCODERS
from .vision import VISION

ENTRIES = (*ENCODERS, *DECODERS, *VISION)

__all__ = ["DECODERS", "ENCODERS", "ENTRIES", "VISION"]
