"""TRGLModel: cutting, gradient isolation, end-to-end parity at K = 1, stage export and round trips."""

import pytest
import torch
from transformers import AutoModelForImageClassification, ResNetForImageClassification

from trgl_hf import CifarResNetForImageClassification, TRGLConfig, TRGLModel, TRGLStageForImageClassification


def test_from_base_records_split_and_shapes(hf_resnet):
    model = TRGLModel.from_base(hf_resnet, TRGLConfig(num_modules=3, image_size=32))
    assert model.config.split == [2, 1, 1]
    assert model.config.module_output_shapes == [[8, 8, 8], [16, 4, 4], [16, 4, 4]]
    assert model.config.family == "resnet" and model.config.num_labels == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [({"num_modules": 5}, "between 1 and 4"), ({"split": [1, 1]}, "sum to"), ({"split": [4, 1]}, "sum to")],
)
def test_bad_cut_is_refused(hf_resnet, kwargs, message):
    with pytest.raises(ValueError, match=message):
        TRGLModel.from_base(hf_resnet, TRGLConfig(image_size=32, **kwargs))


def test_balanced_split_follows_activation_memory(make_hf_resnet):
    base = make_hf_resnet(depths=(3, 3))
    equal = TRGLModel.from_base(base, TRGLConfig(num_modules=2, image_size=32))
    balanced = TRGLModel.from_base(base, TRGLConfig(num_modules=2, image_size=32, split_policy="balanced"))
    assert equal.config.split == [3, 3]
    assert balanced.config.split[0] < 3  # early blocks (stem included) hold the largest activations


def test_parallel_gradients_do_not_cross_module_boundaries(hf_resnet, images):
    pixel_values, labels = images
    model = TRGLModel.from_base(hf_resnet, TRGLConfig(num_modules=3, image_size=32)).train()
    all_params = list(model.parameters())
    for step in model.iter_modules(pixel_values=pixel_values, labels=labels):
        own = set(map(id, model.module_parameters(step.index)))
        grads = torch.autograd.grad(step.loss, all_params, allow_unused=True, retain_graph=False)
        for param, grad in zip(all_params, grads):
            if id(param) in own:
                assert grad is not None
            else:
                assert grad is None or not grad.any(), "gradient crossed a module boundary"


def test_sequential_prefix_runs_without_graph(hf_resnet, images):
    pixel_values, labels = images
    model = TRGLModel.from_base(hf_resnet, TRGLConfig(num_modules=3, image_size=32))
    model.set_trainable_modules([1])
    model.train()
    assert not model.adapter.blocks[0].training and model.adapter.blocks[2].training
    assert not any(p.requires_grad for p in model.module_parameters(0))
    steps = list(model.iter_modules(pixel_values=pixel_values, labels=labels))
    assert [s.index for s in steps] == [0, 1] and not steps[0].loss.requires_grad and steps[1].loss.requires_grad


def test_one_module_without_transport_is_end_to_end_training(hf_resnet, images):
    pixel_values, labels = images
    model = TRGLModel.from_base(
        hf_resnet, TRGLConfig(num_modules=1, use_transport=False, aux_head="linear", image_size=32)
    )
    hf_resnet.train(), model.train()
    base_loss = hf_resnet(pixel_values=pixel_values, labels=labels).loss
    base_loss.backward()
    base_grads = {name: p.grad.clone() for name, p in hf_resnet.resnet.named_parameters()}
    classifier_grad = hf_resnet.classifier[1].weight.grad.clone()
    hf_resnet.zero_grad()
    trgl_loss = model(pixel_values=pixel_values, labels=labels).loss
    trgl_loss.backward()
    torch.testing.assert_close(trgl_loss, base_loss)
    for name, param in model.backbone.named_parameters():
        torch.testing.assert_close(param.grad, base_grads[name])
    torch.testing.assert_close(model.heads[0].linear.weight.grad, classifier_grad)


@pytest.mark.parametrize("aux_head", ["linear", "conv"])
@pytest.mark.parametrize("family", ["hf", "cifar"])
def test_every_stage_reloads_with_auto_class_and_same_logits(
    family, aux_head, tmp_path, make_hf_resnet, make_cifar_resnet
):
    if family == "hf":
        base, pixel_values = make_hf_resnet(depths=(2, 1)), torch.randn(2, 3, 32, 32)
        native = ResNetForImageClassification
    else:
        base, pixel_values = make_cifar_resnet(num_channels=1, depths=(1, 1, 1)), torch.randn(2, 1, 8, 8)
        native = CifarResNetForImageClassification
    model = TRGLModel.from_base(
        base, TRGLConfig(num_modules=3, aux_head=aux_head, image_size=32 if family == "hf" else 8)
    )
    model.train()
    model(pixel_values=pixel_values)  # move BatchNorm statistics away from their initial values
    model.eval()
    with torch.no_grad():
        module_logits = model(pixel_values=pixel_values).module_logits
    for stage in range(1, 4):
        model.export_stage(stage).save_pretrained(tmp_path / f"stage-{stage}")
        loaded = AutoModelForImageClassification.from_pretrained(tmp_path / f"stage-{stage}")
        assert isinstance(loaded, native if aux_head == "linear" else TRGLStageForImageClassification)
        with torch.no_grad():
            torch.testing.assert_close(loaded(pixel_values=pixel_values).logits, module_logits[:, stage - 1])


def test_whole_model_round_trip(tmp_path, hf_resnet, images):
    pixel_values, _ = images
    model = TRGLModel.from_base(hf_resnet, TRGLConfig(num_modules=2, tau=[1.0, 2.0], image_size=32))
    model.train()
    model(pixel_values=pixel_values)
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = TRGLModel.from_pretrained(tmp_path).eval()
    assert loaded.config.split == model.config.split and loaded.config.tau == [1.0, 2.0]
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(pixel_values=pixel_values).module_logits, model(pixel_values=pixel_values).module_logits
        )
    auto_loaded = __import__("transformers").AutoModel.from_pretrained(tmp_path)
    assert isinstance(auto_loaded, TRGLModel)


def test_transport_keeps_no_more_activations_than_vangl(make_hf_resnet, images):
    pixel_values, labels = images
    saved = {}
    transports = {}
    for use_transport in (True, False):
        model = TRGLModel.from_base(make_hf_resnet(), TRGLConfig(num_modules=2, use_transport=use_transport,
                                                                 image_size=32)).train()  # fmt: skip
        storages = {}

        def pack(tensor, storages=storages):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            steps = list(model.iter_modules(pixel_values=pixel_values, labels=labels))
        saved[use_transport] = sum(storages.values())
        transports[use_transport] = torch.stack([s.transport for s in steps])
        assert steps[0].transport.requires_grad is use_transport
    torch.testing.assert_close(transports[True].detach(), transports[False])
    branch_bytes = []
    probe = TRGLModel.from_base(make_hf_resnet(), TRGLConfig(num_modules=2, image_size=32)).train()
    for block in probe.adapter.blocks:
        block.layer.register_forward_hook(lambda m, a, o: branch_bytes.append(o.nbytes))
    with torch.no_grad():
        list(probe.iter_modules(pixel_values=pixel_values))
    # the energy is fused with each branch's last batch norm: at most references to its (tiny) bias are added
    assert saved[True] - saved[False] < min(branch_bytes)


def test_frozen_heads_can_be_skipped(hf_resnet, images):
    pixel_values, labels = images
    model = TRGLModel.from_base(hf_resnet, TRGLConfig(num_modules=3, image_size=32))
    model.set_trainable_modules([2])
    model.train()
    steps = list(model.iter_modules(pixel_values=pixel_values, labels=labels, frozen_heads=False))
    assert [s.logits is None for s in steps] == [True, True, False]
