"""Slow tier, as root: under a hard cgroup v1 memory cap, an offloaded sequential run trains a decoder that the same
run with every module resident cannot (the kernel kills it), as on a small machine or container."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

MiB = 1024**2

RUN = textwrap.dedent("""
    import json, sys, torch
    from datasets import Dataset
    from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments

    base, out, offload = sys.argv[1:4]
    torch.manual_seed(0)
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=8, aux_head="tied"))
    ids = torch.randint(0, 1000, (8, 64))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    args = TRGLTrainingArguments(output_dir=out, trgl_mode="sequential", max_steps=1, per_device_train_batch_size=2,
                                 save_strategy="no", report_to="none", use_cpu=True, trgl_save_stages="last",
                                 trgl_offload=offload, disable_tqdm=True)
    TRGLTrainer(model=model, args=args, train_dataset=data).train()
    print(json.dumps({"trained": offload}))
""")


@pytest.mark.slow
def test_an_offloaded_run_trains_under_a_cap_that_kills_the_resident_run(tmp_path, memory_cap):
    """A 208M-parameter Llama (831 MB of weights, from its checkpoint on disk), K = 8 with a tied head, one step per
    module, under 1.2 GiB: measured without a cap, the offloaded run's anonymous peak is ~820 MiB and the resident
    run's ~1490 MiB (every trained module stays in memory). The stage it writes loads and generates."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=16,
                         num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=False)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path / "base", max_shard_size="200MB")
    results = {}
    with memory_cap(1229 * MiB) as group:
        for offload in ("disk", "none"):
            script = f'echo $$ > {group / "cgroup.procs"} && exec "$0" -c "$1" "$2" "$3" "$4"'
            command = [
                "sh",
                "-c",
                script,
                sys.executable,
                RUN,
                str(tmp_path / "base"),
                str(tmp_path / offload),
                offload,
            ]
            results[offload] = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert results["disk"].returncode == 0, results["disk"].stderr[-3000:]
    assert json.loads(results["disk"].stdout.strip().splitlines()[-1]) == {"trained": "disk"}
    assert results["none"].returncode == -9, (results["none"].returncode, results["none"].stderr[-2000:])  # OOM-killed
    from transformers import AutoModelForCausalLM

    stage = AutoModelForCausalLM.from_pretrained(tmp_path / "disk" / "stage-08")
    generated = stage.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 7)
