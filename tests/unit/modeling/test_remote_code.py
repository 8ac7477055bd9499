"""Remote code: a saved folder carries `auto_map` and the trgl_hf bundle (the modeling/ and models/ packages, core
dependencies only), loads in this process, pushes its remote code, and its stages load as truncated backbones (the
loads in a fresh process: tests/integration/modeling/test_remote_code.py)."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel, BertConfig, BertForSequenceClassification
from transformers.dynamic_module_utils import get_imports, get_relative_import_files
from transformers.utils import hub as transformers_hub

from trgl_hf import TRGLConfig, TRGLModel
from trgl_hf.modeling import remote_code

SAVED_FILES = ["config.json", "configuration_trgl_remote.py", "model.safetensors", "modeling_trgl_remote.py",
               "trgl_hf_bundle.py"]  # fmt: skip
CORE_DEPENDENCIES = {"torch", "transformers", "huggingface_hub", "numpy", "safetensors"}


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


def test_saved_folder_carries_auto_map_and_remote_code_and_loads_as_before(tmp_path, make_cifar_resnet):
    io = saved_model("cifar", tmp_path / "model", make_cifar_resnet)
    folder = tmp_path / "model"
    assert sorted(p.name for p in folder.iterdir()) == SAVED_FILES
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_trgl_remote.TRGLConfig",
                                  "AutoModel": "modeling_trgl_remote.TRGLModel"}  # fmt: skip
    # transformers copies the entry point and the bundle only, and finds nothing but the standard library (and
    # transformers, imported lazily) to check in them: the bundled sources are data.
    for entry in ("configuration_trgl_remote.py", "modeling_trgl_remote.py"):
        assert get_relative_import_files(folder / entry) == [str(folder / "trgl_hf_bundle.py")]
        assert get_imports(folder / entry) == []
    assert set(get_imports(folder / "trgl_hf_bundle.py")) <= set(sys.stdlib_module_names) | {"transformers"}
    # Where trgl_hf is imported the folder loads without remote code, with the installed classes.
    assert type(AutoConfig.from_pretrained(folder)) is TRGLConfig
    expected = io.pop("expected")
    for loaded in (AutoModel.from_pretrained(folder), TRGLModel.from_pretrained(folder),
                   AutoModel.from_pretrained(folder, trust_remote_code=True)):  # fmt: skip
        assert type(loaded) is TRGLModel
        with torch.no_grad():
            assert torch.equal(loaded.eval()(**io).module_logits, expected)
    assert loaded.config.auto_map == config["auto_map"]


def test_model_config_is_left_as_it_was_after_saving(tmp_path, make_cifar_resnet):
    model = TRGLModel.from_base(make_cifar_resnet(num_channels=1), TRGLConfig(num_modules=3))
    model.save_pretrained(tmp_path / "model")
    assert "auto_map" not in model.config.__dict__ and "_auto_class" not in model.config.__dict__
    model.config.auto_map = {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}
    model.save_pretrained(tmp_path / "model")
    assert model.config.auto_map == {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}
    assert json.loads((tmp_path / "model" / "config.json").read_text())["auto_map"] == {
        "AutoTokenizer": ["tokenization_x.XTokenizer", None],
        **remote_code.auto_map(),
    }


def module_level_imports(source: str) -> set[str]:
    """Top-level packages a module imports when it is imported (not in functions, `try` or `TYPE_CHECKING`)."""
    found, pending = set(), list(ast.parse(source).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
        elif isinstance(node, (ast.If, ast.With, ast.ClassDef)):
            pending.extend(node.body + getattr(node, "orelse", []))
    return found - {"__future__"}


def test_bundle_needs_only_core_dependencies():
    _, sha256, data, _ = remote_code.encode_bundle("trgl_hf")
    modules = remote_code.decode_bundle(data, sha256)["modules"]
    assert {"modeling.modeling_trgl", "modeling.configuration_trgl", "modeling.remote_code", "modeling.architectures",
            "modeling.architectures.registry"} <= set(modules)  # fmt: skip
    outside = {"training.trainer", "training.training_args", "training.data", "hub.push", "modeling.registration"}
    assert not outside & set(modules)
    needs = {name: module_level_imports(entry["source"]) - set(sys.stdlib_module_names) - CORE_DEPENDENCIES
             for name, entry in modules.items()}  # fmt: skip
    assert not {name: extra for name, extra in needs.items() if extra}, (
        "trgl_hf modules bundled for remote code import packages a bare torch/transformers install lacks: import "
        "them lazily, or keep the model code from depending on those modules"
    )


def test_bundle_holds_only_the_modeling_and_models_packages():
    """The remote code a saved model carries is the model: nothing of training, distribution, export or the Hub."""
    _, sha256, data, _ = remote_code.encode_bundle("trgl_hf")
    modules = remote_code.decode_bundle(data, sha256)["modules"]
    outside = sorted(name for name in modules if name.split(".")[0] not in ("modeling", "models"))
    assert not outside, f"the remote-code bundle holds modules outside modeling/ and models/: {outside}"


def test_bundle_registers_the_auto_classes_of_registration():
    from transformers.models.auto import modeling_auto
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    registered = {model_type: config_class for model_type, config_class in CONFIG_MAPPING._extra_content.items()
                  if config_class.__module__.startswith("trgl_hf.") and model_type != "trgl"}  # fmt: skip
    assert set(registered) == set(remote_code.AUTO_CLASSES)
    for model_type, (config_module, config_name, models) in remote_code.AUTO_CLASSES.items():
        config_class = registered[model_type]
        assert (config_class.__module__, config_class.__name__) == (f"trgl_hf.{config_module}", config_name)
        expected = {}
        for auto_name in dir(modeling_auto):
            auto_class = getattr(modeling_auto, auto_name)
            model_class = getattr(getattr(auto_class, "_model_mapping", None), "_extra_content", {}).get(config_class)
            if auto_name.startswith("Auto") and model_class is not None:
                expected[auto_name] = (model_class.__module__.removeprefix("trgl_hf."), model_class.__name__)
        assert models == expected


def test_corrupted_bundle_is_refused(tmp_path):
    version, sha256, data, _ = remote_code.encode_bundle("trgl_hf")
    with pytest.raises(ImportError, match="corrupted"):
        remote_code.load_bundle(data, "0" * 64, version)
    assert remote_code.decode_bundle(data, sha256)["version"] == version


def _load_fakehub():
    # pytest runs with --import-mode=importlib, so tests/ is not on sys.path: load the helper module by file.
    name = "trgl_hf_tests_fakehub"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[2] / "fakehub.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_save_pretrained_push_to_hub_uploads_the_remote_code(tmp_path, make_cifar_resnet, monkeypatch):
    fakehub = _load_fakehub()
    model = TRGLModel.from_base(make_cifar_resnet(num_channels=1), TRGLConfig(num_modules=3))
    model.save_pretrained(tmp_path / "model")  # the remote-code files exist before the push and have not changed
    with fakehub.start_fake_hub() as fake, fakehub.fake_hub_session():
        monkeypatch.setattr(transformers_hub, "_hf_api", fake.api())  # what `save_pretrained(push_to_hub=True)` uses
        model.save_pretrained(tmp_path / "model", push_to_hub=True, repo_id="fake-user/trgl")
        assert not fake.unhandled
    assert sorted(fake.store["fake-user/trgl"]["main"]) == sorted(SAVED_FILES + ["README.md"])


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


def test_auto_model_gives_the_truncated_backbone_of_a_stage(tmp_path, make_cifar_resnet):
    io = saved_stages(tmp_path, make_cifar_resnet)
    for kind, values in io.items():
        inputs = {k: v for k, v in values.items() if k != "expected"}
        config = json.loads((tmp_path / kind / "config.json").read_text())
        assert config["auto_map"]["AutoModel"] == "modeling_trgl_stage.TRGLStageModel"
        model = AutoModel.from_pretrained(tmp_path / kind)
        assert (type(model).__module__, type(model).__name__) == ("trgl_hf.models.modeling_trgl_stage",
                                                                  "TRGLStageModel")  # fmt: skip
        assert not hasattr(model, "head")
        assert model.main_input_name == ("input_ids" if kind == "mean" else "pixel_values")
        with torch.no_grad():
            assert torch.equal(model(**inputs).last_hidden_state, values["expected"])
