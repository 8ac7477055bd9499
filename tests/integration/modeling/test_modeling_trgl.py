"""A TRGLModel stage in a fresh process: a conv stage loads through remote code where trgl_hf cannot be imported (the
rest of TRGLModel's tests: tests/unit/modeling/test_modeling_trgl.py)."""

import subprocess
import sys
import textwrap

import torch

from trgl_hf import TRGLConfig, TRGLModel


def test_conv_stage_loads_without_trgl_hf_through_remote_code(tmp_path, make_cifar_resnet):
    base = make_cifar_resnet(num_channels=1)
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=3, aux_head="conv")).eval()
    pixel_values = torch.randn(2, 1, 8, 8)
    model.export_stage(2).save_pretrained(tmp_path / "stage")
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).module_logits[:, 1]
    torch.save({"pixel_values": pixel_values, "expected": expected}, tmp_path / "io.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["trgl_hf"] = None  # trgl_hf is not importable here
        import torch
        from transformers import AutoModelForImageClassification
        io = torch.load(r"{tmp_path / "io.pt"}", weights_only=True)
        model = AutoModelForImageClassification.from_pretrained(r"{tmp_path / "stage"}", trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            torch.testing.assert_close(model(pixel_values=io["pixel_values"]).logits, io["expected"])
        print("remote-code-ok")
        """
    )
    env = {"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert "remote-code-ok" in result.stdout, result.stderr[-3000:]
