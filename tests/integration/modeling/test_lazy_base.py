"""`TRGLModel.from_base(path)` measured in a fresh process (slow tier): cutting a checkpoint does not load it into
memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM


def save_sharded_llama(folder, layers: int = 4, hidden: int = 32) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder, max_shard_size="20KB")


MEASURE = textwrap.dedent("""
    import ctypes, json, sys
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from trgl_hf import TRGLConfig, TRGLModel

    def anon():  # live anonymous memory: what glibc keeps of freed small blocks is given back first
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024

    small = LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=2, num_attention_heads=2)
    TRGLModel.from_base(LlamaForCausalLM(small), TRGLConfig(num_modules=2, aux_head="tied"))  # imports, warm
    before = anon()
    model = TRGLModel.from_base(sys.argv[1], TRGLConfig(num_modules=4, aux_head="tied"))
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"grown": anon() - before, "size": size}))
""")


@pytest.mark.slow
def test_cutting_a_checkpoint_does_not_load_it_into_memory(tmp_path):
    save_sharded_llama(tmp_path / "base", layers=24, hidden=512)  # ~63M parameters, 252 MB
    result = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / "base")], capture_output=True, text=True,
                            check=True, env={"MALLOC_MMAP_THRESHOLD_": "65536", "PATH": "/usr/bin:/bin"})  # fmt: skip
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["size"] > 200e6
    assert measured["grown"] < 0.1 * measured["size"], measured
