"""The private transformers / accelerate APIs trgl_hf uses are checked against pinned versions, in one place."""

import re
from pathlib import Path

import accelerate
import pytest
import transformers

from trgl_hf.training import hf_internals

ROOT = Path(__file__).resolve().parents[2]


def test_checked_versions_are_the_installed_and_pinned_ones():
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (ROOT / "constraints.txt").read_text(), re.MULTILINE))
    installed = {"transformers": transformers.__version__, "accelerate": accelerate.__version__}
    assert hf_internals.CHECKED_VERSIONS == installed == {name: pins[name] for name in installed}


def test_a_missing_private_api_fails_loudly_by_name(monkeypatch):
    hf_internals.check_private_api()
    monkeypatch.delattr(transformers.Trainer, "_clip_grad_norm")
    with pytest.raises(ImportError, match=r"Trainer\._clip_grad_norm.*constraints\.txt"):
        hf_internals.check_private_api()
