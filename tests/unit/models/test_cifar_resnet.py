"""Tests of the CIFAR ResNet (configuration, modeling, save/load) and of the akamaster checkpoint loader."""

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trgl_hf.models.cifar_weights import AKAMASTER_NORMALIZATION, load_akamaster_resnet
from trgl_hf.models.configuration_cifar_resnet import CifarResNetConfig
from trgl_hf.models.modeling_cifar_resnet import (
    CifarResNetBasicLayer,
    CifarResNetForImageClassification,
    CifarResNetModel,
    CifarResNetShortCut,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
RESNET20_FILE = "models/resnet_cifar10_akamaster/resnet20-12fca82f.th"
CIFAR10_TEST_FILE = "cifar10/test-00000-of-00001.parquet"


def _shared_data_dir() -> Path | None:
    """The shared data folder: `$TRGL_SHARED_DATA`, else `<repo>/../shared/data`, else `/work/shared/data`."""
    if env := os.environ.get("TRGL_SHARED_DATA"):
        candidates = [Path(env)]
    else:
        candidates = [REPO_ROOT.parent / "shared" / "data", Path("/work/shared/data")]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return None


def _shared_file(relative: str) -> Path:
    data = _shared_data_dir()
    if data is None:
        pytest.skip("shared data not found (set TRGL_SHARED_DATA or put it at <repo>/../shared/data)")
    path = data / relative
    if not path.is_file():
        pytest.skip(f"{path} is absent from the shared data")
    return path


def _cifar10_test_arrays(limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized CIFAR-10 test images `(N, 3, 32, 32)` and labels `(N,)`."""
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_parquet(str(_shared_file(CIFAR10_TEST_FILE)))
    if limit is not None:
        dataset = dataset.select(range(limit))
    arrays = dataset.with_format("numpy")[:]
    images = torch.from_numpy(arrays["img"]).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(AKAMASTER_NORMALIZATION["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(AKAMASTER_NORMALIZATION["std"]).view(1, 3, 1, 1)
    return (images - mean) / std, torch.from_numpy(arrays["label"]).long()


def _accuracy(model: CifarResNetForImageClassification, images: torch.Tensor, labels: torch.Tensor) -> float:
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), 500):
            logits = model(images[start : start + 500]).logits
            correct += (logits.argmax(-1) == labels[start : start + 500]).sum().item()
    return 100.0 * correct / len(images)


def _randomize_batch_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every batch norm non-trivial affine parameters and statistics, so eval outputs are not degenerate."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                size = module.num_features
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)


def _tiny_model(**kwargs) -> CifarResNetForImageClassification:
    torch.manual_seed(0)
    config = CifarResNetConfig(num_labels=kwargs.pop("num_labels", 10), **kwargs)
    model = CifarResNetForImageClassification(config)
    _randomize_batch_norms(model)
    return model.eval()


def _to_akamaster_state_dict(model: CifarResNetForImageClassification) -> dict[str, torch.Tensor]:
    """Inverse of the loader's key mapping (with the `module.` prefix, without `num_batches_tracked`)."""
    state_dict = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        parts = key.split(".")
        if key.startswith("resnet.embedder."):
            new_key = ("conv1." if parts[3] == "convolution" else "bn1.") + parts[4]
        elif key.startswith("resnet.encoder."):
            stage, block, conv, kind, suffix = int(parts[3]), parts[5], int(parts[7]), parts[8], parts[9]
            name = ("conv" if kind == "convolution" else "bn") + str(conv + 1)
            new_key = f"layer{stage + 1}.{block}.{name}.{suffix}"
        else:
            new_key = "linear." + parts[2]
        state_dict["module." + new_key] = value.clone()
    return state_dict


# ---------------------------------------------------------------------------------------------------------------------
# configuration


@pytest.mark.parametrize("depth, n", [(20, 3), (32, 5), (44, 7), (56, 9), (110, 18)])
def test_from_depth(depth: int, n: int) -> None:
    config = CifarResNetConfig.from_depth(depth, num_labels=10)
    assert config.depths == [n, n, n]
    assert config.hidden_sizes == [16, 32, 64]
    assert config.num_labels == 10
    assert 2 + 2 * sum(config.depths) == depth


@pytest.mark.parametrize("depth, num_blocks", [(20, 9), (32, 15)])
def test_from_depth_builds_the_right_number_of_blocks(depth: int, num_blocks: int) -> None:
    model = CifarResNetModel(CifarResNetConfig.from_depth(depth))
    blocks = [m for m in model.modules() if isinstance(m, CifarResNetBasicLayer)]
    assert len(blocks) == num_blocks
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) + 1 == depth  # + the classifier's linear layer


@pytest.mark.parametrize("depth", [21, 2, 0, 19])
def test_from_depth_rejects_invalid_depths(depth: int) -> None:
    with pytest.raises(ValueError, match="6n \\+ 2"):
        CifarResNetConfig.from_depth(depth)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"depths": [3, 3], "hidden_sizes": [16, 32, 64]},
        {"depths": [3, -1, 0]},
        {"depths": [0, 0, 0]},
        {"depths": [3, 0, 1]},
        {"layer_type": "bottleneck"},
        {"hidden_sizes": [16, 8, 64]},
    ],
)
def test_config_rejects_invalid_architectures(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        CifarResNetConfig(**kwargs)


def test_config_defaults_are_resnet20() -> None:
    config = CifarResNetConfig()
    assert config.model_type == "cifar_resnet"
    assert (config.num_channels, config.embedding_size, config.image_size) == (3, 16, 32)
    assert config.depths == [3, 3, 3] and config.hidden_sizes == [16, 32, 64]
    assert config.output_channels == 64
    assert CifarResNetConfig(depths=[3, 1, 0]).output_channels == 32


# ---------------------------------------------------------------------------------------------------------------------
# modeling


def test_forward_shapes_and_loss() -> None:
    model = _tiny_model()
    pixel_values = torch.randn(2, 3, 32, 32)
    labels = torch.tensor([1, 7])
    outputs = model(pixel_values, labels=labels, output_hidden_states=True)
    assert outputs.logits.shape == (2, 10)
    assert [tuple(h.shape) for h in outputs.hidden_states] == [
        (2, 16, 32, 32),
        (2, 16, 32, 32),
        (2, 32, 16, 16),
        (2, 64, 8, 8),
    ]
    expected_loss = torch.nn.functional.cross_entropy(outputs.logits, labels)
    torch.testing.assert_close(outputs.loss, expected_loss)

    base = model.resnet(pixel_values)
    assert base.last_hidden_state.shape == (2, 64, 8, 8)
    assert base.pooler_output.shape == (2, 64, 1, 1)
    assert base.hidden_states is None

    as_tuple = model(pixel_values, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], outputs.logits)


def test_module_layout_mirrors_hf_resnet() -> None:
    model = _tiny_model()
    embedder = model.resnet.embedder.embedder
    assert isinstance(embedder.convolution, torch.nn.Conv2d)
    assert embedder.convolution.kernel_size == (3, 3) and embedder.convolution.stride == (1, 1)
    assert embedder.convolution.bias is None
    assert isinstance(embedder.normalization, torch.nn.BatchNorm2d)
    assert isinstance(embedder.activation, torch.nn.ReLU)
    assert len(model.resnet.encoder.stages) == 3
    first_block = model.resnet.encoder.stages[0].layers[0]
    assert isinstance(first_block.shortcut, torch.nn.Identity)
    assert isinstance(first_block.layer[1].activation, torch.nn.Identity)
    down_block = model.resnet.encoder.stages[1].layers[0]
    assert isinstance(down_block.shortcut, CifarResNetShortCut)
    assert down_block.layer[0].convolution.stride == (2, 2)
    assert isinstance(model.classifier[0], torch.nn.Flatten)
    assert model.classifier[1].in_features == 64


def test_option_a_shortcut() -> None:
    shortcut = CifarResNetShortCut(16, 32, stride=2)
    assert list(shortcut.parameters()) == [] and list(shortcut.buffers()) == []
    x = torch.randn(2, 16, 8, 8)
    y = shortcut(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, :8]) == 0 and torch.count_nonzero(y[:, 24:]) == 0


def test_residual_branch_hook_on_block_layer() -> None:
    model = _tiny_model()
    blocks = [m for m in model.modules() if isinstance(m, CifarResNetBasicLayer)]
    captured: dict[int, dict[str, torch.Tensor]] = {i: {} for i in range(len(blocks))}
    handles = []
    for i, block in enumerate(blocks):

        def save_input(module, args, i=i):
            captured[i]["input"] = args[0].clone()

        def save_branch(module, args, output, i=i):
            captured[i]["branch"] = output.clone()

        def save_output(module, args, output, i=i):
            captured[i]["output"] = output.clone()

        handles.append(block.register_forward_pre_hook(save_input))
        handles.append(block.layer.register_forward_hook(save_branch))
        handles.append(block.register_forward_hook(save_output))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
        num_downsampling = 0
        for i, block in enumerate(blocks):
            shortcut = block.shortcut(captured[i]["input"])
            num_downsampling += isinstance(block.shortcut, CifarResNetShortCut)
            expected = torch.relu(captured[i]["branch"] + shortcut)
            assert torch.equal(captured[i]["output"], expected), f"block {i}"
    for handle in handles:
        handle.remove()
    assert len(blocks) == 9 and num_downsampling == 2


def test_save_pretrained_round_trip(tmp_path: Path) -> None:
    model = _tiny_model()
    model.save_pretrained(tmp_path)
    saved_keys = set(load_file(tmp_path / "model.safetensors"))
    assert saved_keys == set(model.state_dict())  # no key renaming on save

    reloaded = CifarResNetForImageClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.depths == model.config.depths
    assert reloaded.config.model_type == "cifar_resnet"
    for key, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key
    pixel_values = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(pixel_values).logits, reloaded(pixel_values).logits)

    base = CifarResNetModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(base(pixel_values).pooler_output, model.resnet(pixel_values).pooler_output)


@pytest.mark.parametrize(
    "depths, hidden_sizes, channels, side",
    [([3, 1], [16, 32], 32, 16), ([3, 0, 0], [16, 32, 64], 16, 32), ([1], [16], 16, 32)],
)
def test_truncated_config(depths: list[int], hidden_sizes: list[int], channels: int, side: int) -> None:
    model = _tiny_model(depths=depths, hidden_sizes=hidden_sizes)
    assert len(model.resnet.encoder.stages) == sum(d > 0 for d in depths)
    assert model.classifier[1].in_features == channels
    outputs = model(torch.randn(2, 3, 32, 32), output_hidden_states=True)
    assert outputs.logits.shape == (2, 10)
    assert outputs.hidden_states[-1].shape == (2, channels, side, side)
    assert len(outputs.hidden_states) == len(model.resnet.encoder.stages) + 1


# ---------------------------------------------------------------------------------------------------------------------
# akamaster checkpoints


def test_load_akamaster_synthetic_checkpoint(tmp_path: Path) -> None:
    source = _tiny_model(depths=[2, 2, 2])
    path = tmp_path / "resnet14.th"
    torch.save({"state_dict": _to_akamaster_state_dict(source), "best_prec1": 0.0}, path)
    model = load_akamaster_resnet(path)
    assert not model.training
    assert model.config.depths == [2, 2, 2]
    assert model.config.id2label[3] == "cat"
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(pixel_values).logits, source(pixel_values).logits)
    with pytest.raises(ValueError, match="num_labels"):
        load_akamaster_resnet(path, num_labels=100)


def test_load_akamaster_rejects_other_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.th"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_akamaster_resnet(garbage)

    wrong_keys = tmp_path / "wrong_keys.th"
    torch.save({"state_dict": {"module.fc.weight": torch.zeros(10, 64)}}, wrong_keys)
    with pytest.raises(ValueError, match="not an akamaster CIFAR ResNet checkpoint"):
        load_akamaster_resnet(wrong_keys)

    source = _tiny_model(depths=[2, 2, 2])
    state_dict = _to_akamaster_state_dict(source)
    del state_dict["module.layer3.1.conv1.weight"]
    incomplete = tmp_path / "incomplete.th"
    torch.save({"state_dict": state_dict}, incomplete)
    with pytest.raises(ValueError, match="does not match a CIFAR ResNet-14: missing .*layers.1.layer.0.convolution"):
        load_akamaster_resnet(incomplete)

    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("module.layer3.1.")}
    uneven = tmp_path / "uneven.th"
    torch.save({"state_dict": state_dict}, uneven)
    with pytest.raises(ValueError, match="same number"):
        load_akamaster_resnet(uneven)

    not_a_dict = tmp_path / "list.th"
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(ValueError, match="not an akamaster CIFAR ResNet checkpoint"):
        load_akamaster_resnet(not_a_dict)


def test_load_akamaster_resnet20_first_test_images() -> None:
    model = load_akamaster_resnet(_shared_file(RESNET20_FILE))
    assert model.config.depths == [3, 3, 3]
    assert sum(p.numel() for p in model.parameters()) == 269_722
    images, labels = _cifar10_test_arrays(limit=200)
    assert _accuracy(model, images, labels) > 60.0


@pytest.mark.slow
def test_load_akamaster_resnet20_test_accuracy() -> None:
    model = load_akamaster_resnet(_shared_file(RESNET20_FILE))
    images, labels = _cifar10_test_arrays()
    assert len(labels) == 10_000
    accuracy = _accuracy(model, images, labels)
    assert 80.5 <= accuracy <= 81.6, f"ResNet-20 accuracy {accuracy:.2f}% (known: 81.03% on this JPEG copy)"
