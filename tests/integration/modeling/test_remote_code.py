"""A whole TRGL model's folder, and a stage's truncated backbone, load with `AutoModel.from_pretrained(folder,
trust_remote_code=True)` in a fresh process: with the installed trgl_hf when its version saved the folder, else with
the trgl_hf sources bundled in it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

import trgl_hf
from trgl_hf import TRGLConfig, TRGLModel

SAVED_FILES = ["config.json", "configuration_trgl_remote.py", "model.safetensors", "modeling_trgl_remote.py",
               "trgl_hf_bundle.py"]  # fmt: skip

# trgl_hf is installed in editable mode: a `.pth` file puts a meta-path finder mapping `trgl_hf` to the repository.
# Drop that finder and any sys.path entry holding a trgl_hf folder, then refuse trgl_hf and its submodules outright.
WITHOUT_TRGL_HF = """
import os, sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path[:] = [p for p in sys.path if "__editable__" not in p and not os.path.isdir(os.path.join(p or ".", "trgl_hf"))]
class RefuseTrglHf:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "trgl_hf" or name.startswith("trgl_hf."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, RefuseTrglHf)
try:
    import trgl_hf
except ModuleNotFoundError:
    pass
else:
    raise AssertionError("trgl_hf is still importable")
"""


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=16, num_labels=3)  # fmt: skip
    return BertForSequenceClassification(config)


def saved_model(kind: str, folder: Path, make_cifar_resnet) -> dict[str, torch.Tensor]:
    """Save a small whole TRGL model into `folder`; return its inputs and module logits (eval mode)."""
    if kind == "cifar":
        model = TRGLModel.from_base(make_cifar_resnet(num_channels=1), TRGLConfig(num_modules=3, aux_head="conv"))
        inputs = {"pixel_values": torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))}
        model.train()
        model(**inputs)  # move BatchNorm statistics away from their initial values
    else:
        model = TRGLModel.from_base(tiny_bert(), TRGLConfig(num_modules=2))
        inputs = {"input_ids": torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))}
    model.eval().save_pretrained(folder)
    with torch.no_grad():
        return {**inputs, "expected": model(**inputs).module_logits}


def run_fresh_python(tmp_path: Path, script: str) -> str:
    """Run `script` in a fresh interpreter (cwd `tmp_path`, offline, own HF cache); return its stdout."""
    env = {"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0 and "remote-code-ok" in result.stdout, result.stderr[-3000:]
    return result.stdout


def load_script(folder: Path, io_file: Path, prelude: str = "") -> str:
    """Load `folder` with remote code, check its logits exactly, save it again into `<folder>-again` and load that."""
    return prelude + textwrap.dedent(
        f"""
        import filecmp, json, os, sys
        import torch
        from transformers import AutoModel
        torch.set_num_threads(1)
        io = torch.load(r"{io_file}", weights_only=True)
        expected = io.pop("expected")
        model = AutoModel.from_pretrained(r"{folder}", trust_remote_code=True)
        with torch.no_grad():
            assert torch.equal(model(**io).module_logits, expected)
        again = r"{folder}-again"
        model.save_pretrained(again)
        assert sorted(os.listdir(again)) == {SAVED_FILES!r}, os.listdir(again)
        assert filecmp.cmp(os.path.join(again, "trgl_hf_bundle.py"), r"{folder / "trgl_hf_bundle.py"}", shallow=False)
        saved = json.load(open(os.path.join(again, "config.json")))
        assert saved["auto_map"] == json.load(open(r"{folder / "config.json"}"))["auto_map"], saved["auto_map"]
        reloaded = AutoModel.from_pretrained(again, trust_remote_code=True)
        assert type(reloaded) is type(model)
        with torch.no_grad():
            assert torch.equal(reloaded(**io).module_logits, expected)
        print("class", type(model).__module__, type(model).__name__)
        print("package", sys.modules[type(model).__module__.split(".")[0]].__version__)
        print("imported trgl_hf", "trgl_hf" in sys.modules)
        print("remote-code-ok")
        """
    )


def test_loads_in_a_fresh_process_with_the_installed_trgl_hf(tmp_path, make_cifar_resnet):
    torch.save(saved_model("cifar", tmp_path / "model", make_cifar_resnet), tmp_path / "io.pt")
    stdout = run_fresh_python(tmp_path, load_script(tmp_path / "model", tmp_path / "io.pt") + textwrap.dedent(
        """
        import trgl_hf
        assert type(model) is trgl_hf.TRGLModel and type(model.config) is trgl_hf.TRGLConfig
        """
    ))  # fmt: skip
    assert "class trgl_hf.modeling.modeling_trgl TRGLModel" in stdout


@pytest.mark.parametrize("kind", ["cifar", "bert"])
def test_loads_in_a_fresh_process_without_trgl_hf(tmp_path, make_cifar_resnet, kind):
    torch.save(saved_model(kind, tmp_path / "model", make_cifar_resnet), tmp_path / "io.pt")
    stdout = run_fresh_python(tmp_path, load_script(tmp_path / "model", tmp_path / "io.pt", WITHOUT_TRGL_HF))
    assert "class _trgl_hf_bundle_" in stdout and f"package {trgl_hf.__version__}\n" in stdout
    assert "imported trgl_hf False" in stdout


def test_a_folder_saved_by_another_version_uses_its_bundle_even_where_trgl_hf_is_installed(
    tmp_path, make_cifar_resnet, monkeypatch
):
    monkeypatch.setattr(trgl_hf, "__version__", "0.0.1.dev-other")
    torch.save(saved_model("bert", tmp_path / "model", make_cifar_resnet), tmp_path / "io.pt")
    assert "BUNDLE_VERSION = '0.0.1.dev-other'" in (tmp_path / "model" / "trgl_hf_bundle.py").read_text()
    stdout = run_fresh_python(tmp_path, load_script(tmp_path / "model", tmp_path / "io.pt"))
    assert "class _trgl_hf_bundle_" in stdout and "package 0.0.1.dev-other\n" in stdout
    assert "imported trgl_hf False" in stdout  # its `__version__` literal differs: it is not even imported


def saved_stages(folder: Path, make_cifar_resnet) -> dict[str, dict[str, torch.Tensor]]:
    """Export stage 1 of a mean-head BERT and of a conv-head CIFAR ResNet into `folder/<kind>`; return each one's
    inputs and the hidden states of its truncated backbone (eval mode)."""
    bert = TRGLModel.from_base(tiny_bert(), TRGLConfig(num_modules=2, aux_head="mean"))
    cifar = TRGLModel.from_base(make_cifar_resnet(num_channels=1), TRGLConfig(num_modules=3, aux_head="conv"))
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "mean": {"input_ids": torch.randint(0, 50, (2, 8), generator=generator),
                 "attention_mask": torch.tensor([[1] * 8, [1] * 5 + [0] * 3])},
        "conv": {"pixel_values": torch.randn(2, 1, 8, 8, generator=generator)},
    }  # fmt: skip
    cifar.train()(**inputs["conv"])  # move BatchNorm statistics away from their initial values
    io = {}
    for kind, model in (("mean", bert), ("conv", cifar)):
        stage = model.eval().export_stage(1)
        stage.save_pretrained(folder / kind)
        with torch.no_grad():
            hidden = stage.backbone(**inputs[kind]).last_hidden_state
        io[kind] = {**inputs[kind], "expected": hidden}
    return io


def test_auto_model_gives_the_truncated_backbone_of_a_stage_without_trgl_hf(tmp_path, make_cifar_resnet):
    torch.save(saved_stages(tmp_path, make_cifar_resnet), tmp_path / "io.pt")
    script = WITHOUT_TRGL_HF + textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModel
        for kind, io in torch.load(r"{tmp_path / "io.pt"}", weights_only=True).items():
            expected = io.pop("expected")
            model = AutoModel.from_pretrained(r"{tmp_path}/" + kind, trust_remote_code=True)
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            assert type(model).__name__ == "TRGLStageModel", type(model)
            with torch.no_grad():
                assert torch.equal(model(**io).last_hidden_state, expected), kind
        print("remote-code-ok")
        """
    )
    run_fresh_python(tmp_path, script)
