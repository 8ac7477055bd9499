"""`aux_head="tied"`: decoder heads that share one vocabulary projection (module 1's) and own only a final norm."""

import codecs
import this  # noqa: F401  (the Zen of Python: a small real text corpus that ships with Python)

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    pipeline,
)

from trgl_hf import TRGLConfig, TRGLModel
from trgl_hf.modeling.architectures.registry import CAUSAL_LM, REGISTRY

from .test_registry import build as build_registered
from .test_registry import inputs_for, perturb

CAUSAL_LMS = sorted({name for spec in REGISTRY.values() for name, task in spec.classes.items() if task == CAUSAL_LM})

ZEN = codecs.decode(this.s, "rot13")
VOCAB = sorted(set(ZEN))


def build(family: str):
    """GPT-2 ties its LM head to the input embedding; this Llama has an untied `lm_head`."""
    torch.manual_seed(0)
    if family == "gpt2":
        config = GPT2Config(vocab_size=len(VOCAB), n_embd=16, n_layer=3, n_head=2, n_positions=64, bos_token_id=0,
                            eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
        return GPT2LMHeadModel(config)
    config = LlamaConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=32, bos_token_id=0, eos_token_id=0)  # fmt: skip
    return LlamaForCausalLM(config)


def final_norm_size(family: str, base) -> int:
    norm = base.transformer.ln_f if family == "gpt2" else base.model.norm
    return sum(p.numel() for p in norm.parameters())


def batch(rows: int = 3, length: int = 9):
    torch.manual_seed(1)
    input_ids = torch.randint(0, len(VOCAB), (rows, length))
    labels = input_ids.clone()
    labels[0, :3] = -100
    return input_ids, labels


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_tied_heads_add_only_one_final_norm_per_module(family):
    base = build(family)
    base_parameters = sum(p.numel() for p in base.parameters())
    native = TRGLModel.from_base(build(family), TRGLConfig(num_modules=3, aux_head="native"))
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=3, aux_head="tied"))
    vocabulary_matrix = len(VOCAB) * 16
    assert sum(p.numel() for p in model.parameters()) == base_parameters + 3 * final_norm_size(family, base)
    assert sum(p.numel() for p in native.parameters()) > base_parameters + 3 * vocabulary_matrix - vocabulary_matrix
    for head in model.heads[1:]:  # later heads own the norm only
        assert all(p.numel() < vocabulary_matrix for p in head.parameters())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_each_module_trains_only_its_own_parameters_and_module_1_the_projection(family):
    model = TRGLModel.from_base(build(family), TRGLConfig(num_modules=3, aux_head="tied")).train()
    projection = model.adapter.shared_projection(model.heads).weight
    assert id(projection) in set(map(id, model.module_parameters(0)))  # module 1 owns the shared projection
    input_ids, labels = batch()
    params = list(model.parameters())
    for step in model.iter_modules(labels=labels, input_ids=input_ids):
        own = set(map(id, model.module_parameters(step.index)))
        grads = torch.autograd.grad(step.loss, params, allow_unused=True)
        assert all(g is not None and g.any() for p, g in zip(params, grads) if id(p) in own and p.dim() > 0)
        assert all(g is None or not g.any() for p, g in zip(params, grads) if id(p) not in own)


@pytest.mark.parametrize("class_name", CAUSAL_LMS)
def test_every_registered_decoder_trains_and_exports_tied_heads_exactly(class_name, tmp_path):
    base = build_registered(class_name).eval()
    perturb(base)
    inputs, labels = inputs_for(base)
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=2, aux_head="tied", lm_loss_chunk_tokens=4))
    spec = model.adapter.spec
    tail = sum(p.numel() for name in spec.tail_modules(model.backbone)
               for p in model.backbone.get_submodule(name).parameters())  # fmt: skip
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in base.parameters()) + 2 * tail
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    sum(step.loss for step in model.iter_modules(labels=labels, **inputs)).backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        steps = list(model.iter_modules(**inputs))
    for stage in (1, 2):
        model.export_stage(stage).save_pretrained(tmp_path / str(stage))
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / str(stage)).eval()
        assert type(loaded).__name__ == class_name
        with torch.no_grad():
            torch.testing.assert_close(loaded(**inputs).logits, steps[stage - 1].logits, rtol=1e-5, atol=1e-5)


def test_a_tied_stage_generates_in_a_pipeline(tmp_path):
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({c: i for i, c in enumerate(VOCAB)}, unk_token=VOCAB[0])),
    )
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    model = TRGLModel.from_base(build("gpt2"), TRGLConfig(num_modules=3, aux_head="tied"))
    model.export_stage(2).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    generate = pipeline("text-generation", model=str(tmp_path))
    prompt = "Beautiful is"
    answer = generate(prompt, max_new_tokens=5, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    stage = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    expected = stage.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert list(answer) == expected[0].tolist()
    assert stage.config.tie_word_embeddings and stage.lm_head.weight is stage.transformer.wte.weight


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_whole_model_round_trips_with_tied_heads(family, tmp_path):
    model = TRGLModel.from_base(build(family), TRGLConfig(num_modules=3, aux_head="tied")).eval()
    input_ids, _ = batch()
    model.save_pretrained(tmp_path)
    loaded = TRGLModel.from_pretrained(tmp_path).eval()
    assert loaded.config.aux_head == "tied"
    with torch.no_grad():
        for ours, theirs in zip(model.iter_modules(input_ids=input_ids), loaded.iter_modules(input_ids=input_ids)):
            torch.testing.assert_close(theirs.logits, ours.logits, rtol=0, atol=0)


def test_tied_head_is_refused_where_it_cannot_be_exact():
    classifier = BertForSequenceClassification(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2,
                                                          num_attention_heads=2, intermediate_size=32))  # fmt: skip
    with pytest.raises(ValueError, match="aux_head='native'"):
        TRGLModel.from_base(classifier, TRGLConfig(num_modules=2, aux_head="tied"))
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(build("llama"), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="aux_head='native'"):
        TRGLModel.from_base(lora, TRGLConfig(num_modules=3, aux_head="tied"))


def test_tied_projection_refuses_fsdp_sharded_weights(monkeypatch):
    """FSDP shards module 1's embedding per module; a later head cannot read it: refused, naming the fix."""
    from trgl_hf.modeling.architectures import tied_head

    model = TRGLModel.from_base(build("gpt2"), TRGLConfig(num_modules=3, aux_head="tied"))
    monkeypatch.setattr(tied_head, "_is_dtensor", lambda value: True)
    with pytest.raises(ValueError, match="aux_head='native'` under FSDP"):
        list(model.iter_modules(input_ids=batch()[0]))


def test_head_called_outside_its_model_says_how_to_run_it():
    model = TRGLModel.from_base(build("gpt2"), TRGLConfig(num_modules=3, aux_head="tied"))
    with pytest.raises(RuntimeError, match="shared projection"):
        model.heads[1](torch.randn(1, 4, 16))


def test_default_decoder_head_is_tied_only_where_validation_chose_it(tmp_path):
    """Built from a config with an untied LM head: tied; tied embeddings, pretrained or LoRA bases: native."""
    assert TRGLModel.from_base(build("llama"), num_modules=3).config.aux_head == "tied"
    assert TRGLModel.from_base(build("gpt2"), num_modules=3).config.aux_head == "native"
    build("llama").save_pretrained(tmp_path / "llama")
    assert TRGLModel.from_base(str(tmp_path / "llama"), num_modules=3).config.aux_head == "native"
    assert TRGLModel.from_base(build("llama"), num_modules=3, aux_head="native").config.aux_head == "native"
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(build("llama"), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    assert TRGLModel.from_base(lora, num_modules=3).config.aux_head == "native"
