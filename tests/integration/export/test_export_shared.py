"""`TRGLModel.export_stage(stage, share_weights=True)` measured in a fresh process (slow tier): the shared export of a
100M-parameter decoder takes no second copy of the weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from ...conftest import REPO_ROOT

MEMORY_SCRIPT = textwrap.dedent(
    """
    import json
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from trgl_hf import TRGLConfig, TRGLModel

    def rss_anon():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1024, num_hidden_layers=24,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=64)
    model = TRGLModel.from_base(LlamaForCausalLM(config), TRGLConfig(num_modules=2, aux_head="tied")).eval()
    facts = {}
    for mode in ("shared", "copy"):  # both stay alive: each export's growth is its own
        before = rss_anon()
        stage = model.export_stage(2, share_weights=mode == "shared")
        facts[mode] = rss_anon() - before
        facts[mode + "_stage"] = stage
    stage = facts.pop("shared_stage")
    facts.pop("copy_stage")
    facts["stage_bytes"] = sum(p.numel() * p.element_size() for p in stage.parameters())
    print(json.dumps(facts))
    """
)


@pytest.mark.slow  # ~10 s: a subprocess builds a 96M-parameter Llama and exports its last stage both ways
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RssAnon from /proc")
def test_a_shared_export_of_a_100m_decoder_takes_no_second_copy_of_the_weights():
    # a fixed mmap threshold: freed tensors go back to the system, so RssAnon follows what is alive
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], env=env, capture_output=True, text=True,
                            check=True, timeout=120)  # fmt: skip
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    size = facts["stage_bytes"]
    assert size > 350 * 2**20  # ~96M float32 parameters
    print(f"RssAnon growth: shared {facts['shared'] / 2**20:.1f} MiB, copy {facts['copy'] / 2**20:.1f} MiB, "
          f"stage {size / 2**20:.1f} MiB")  # fmt: skip
    assert facts["shared"] < 0.1 * size
    assert facts["copy"] > 0.5 * size
