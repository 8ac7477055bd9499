"""`TRGLModel.from_base(path)`: the base's weights stay in its checkpoint's files until a forward reads them."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from trgl_hf import TRGLConfig, TRGLModel
from trgl_hf.export.module_files import FileMappings, module_tensors


def save_sharded_llama(folder, layers: int = 4, hidden: int = 32) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder, max_shard_size="20KB")


def test_a_path_gives_the_same_model_as_the_loaded_base(tmp_path):
    save_sharded_llama(tmp_path)
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2  # sharded
    config = TRGLConfig(num_modules=2, aux_head="tied")
    lazy = TRGLModel.from_base(str(tmp_path), config)
    loaded = TRGLModel.from_base(AutoModelForCausalLM.from_pretrained(tmp_path), config)
    expected = loaded.state_dict()
    assert lazy.state_dict().keys() == expected.keys()
    for name, tensor in lazy.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    ids = torch.randint(0, 128, (2, 9))
    lazy.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(lazy(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_the_blocks_of_a_path_base_live_in_its_files(tmp_path):
    save_sharded_llama(tmp_path)
    model = TRGLModel.from_base(str(tmp_path), TRGLConfig(num_modules=2, aux_head="tied"))
    mappings = FileMappings()
    for index, tensors in module_tensors(model).items():
        blocks = {name: tensor for name, tensor in tensors.items() if not name.startswith("heads.")}
        if index is not None:  # the heads are new (a tied head's own norm is a copy)
            assert blocks and all(mappings.holds(tensor) for tensor in blocks.values()), index
    built = TRGLModel.from_base(AutoModelForCausalLM.from_config(model.backbone.config), TRGLConfig(num_modules=2))
    assert not any(mappings.holds(t) for t in module_tensors(built)[1].values())  # a base built in memory is not
