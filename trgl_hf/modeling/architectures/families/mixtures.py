"""Mixture-of-experts decoders of the registry: one `ArchitectureSpec` per family. A block's feed-forward branch is its
sparse MoE block's output; a router's load-balancing loss belongs to the module that owns the router."""

from __future__ import annotations

MIXTURES = ()
