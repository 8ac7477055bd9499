"""Pushing stages to a loopback fake Hub (tests/fakehub.py): layouts, model cards, faults, re-pushes."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import socket
import sys
import time
from pathlib import Path

import httpx2
import pytest
import torch
from huggingface_hub import HfApi, ModelCard, constants
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import _http
from transformers import AutoModelForImageClassification

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainingArguments
from trgl_hf.export.checkpointing import save_stage
from trgl_hf.export.stage_folders import find_stage_folders, stage_dirname
from trgl_hf.hub import pusher as hub_pusher
from trgl_hf.hub.push import (
    HubPushError,
    push_final,
    push_run_stages,
    push_stage,
    stage_branch,
    stage_subfolder,
)


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

REPO = "fake-user/trgl-digits"
# A conv-head stage is a TRGLStageForImageClassification with its remote code.
STAGE_FILES = [
    "README.md",
    "aux_heads.py",
    "config.json",
    "configuration_cifar_resnet.py",
    "configuration_trgl_stage.py",
    "model.safetensors",
    "modeling_cifar_resnet.py",
    "modeling_trgl_stage.py",
    "trgl_stage.json",
]


@pytest.fixture
def fake_hub():
    with fakehub.start_fake_hub() as fake, fakehub.fake_hub_session():
        yield fake
        assert not fake.unhandled, f"huggingface_hub called routes the fake does not serve: {fake.unhandled}"


@pytest.fixture
def api(fake_hub):
    return HfApi(endpoint=fake_hub.endpoint, token="hf_fake")


@pytest.fixture
def no_backoff_sleep(monkeypatch):
    """huggingface_hub retries 5xx answers and network errors with 1 s, 2 s, 4 s, ... sleeps: record them instead."""

    class Clock:
        slept: list[float] = []

        def sleep(self, seconds: float) -> None:
            self.slept.append(seconds)

        def __getattr__(self, name):
            return getattr(time, name)

    clock = Clock()
    monkeypatch.setattr(_http, "time", clock)
    return clock.slept


def _tiny_model(make_cifar_resnet) -> TRGLModel:
    base = make_cifar_resnet(num_labels=10, num_channels=1, depths=(1, 1, 1))
    return TRGLModel.from_base(base, TRGLConfig(num_modules=3))


@pytest.fixture
def stage_run(tmp_path, make_cifar_resnet):
    """`out/stage-01..03` written by `save_stage`, with base model and dataset in the run facts."""
    model = _tiny_model(make_cifar_resnet)
    out = tmp_path / "out"
    info = {
        "base_model": "fake-org/cifar-resnet-tiny",
        "dataset": "digits",
        "trgl_mode": "sequential",
        "taus": [5.0, 10.0, 10.0],
        "use_transport": True,
        "metrics": {"accuracy": 0.5},
        "task": "single_label_classification",
        "module_metrics": {"1": {"accuracy": 0.5}, "2": {"accuracy": 0.75}},
    }
    for stage in (1, 2, 3):
        save_stage(model.export_stage(stage), out / stage_dirname(stage), stage, 3, info)
    return out


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _logits(folder: Path, pixel_values: torch.Tensor) -> torch.Tensor:
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(pixel_values=pixel_values).logits


def _card_data(text: str) -> dict:
    return ModelCard(text).data.to_dict()


def _assert_local_run_loads(out: Path, pixel_values: torch.Tensor) -> None:
    for stage in (1, 2, 3):
        assert _logits(out / stage_dirname(stage), pixel_values).shape == (len(pixel_values), 10)


def test_names():
    assert stage_branch(3) == "stage-03"
    assert stage_subfolder(3) == "stages/stage-03"
    assert stage_branch(12) == "stage-12"


def test_subfolder_strategy_pushes_stages_under_stages_on_main(tmp_path, fake_hub, api, stage_run):
    assert push_run_stages(stage_run, REPO, strategy="subfolder", api=api) == {
        1: "stages/stage-01",
        2: "stages/stage-02",
        3: "stages/stage-03",
    }
    assert fake_hub.branches(REPO) == ["main"]
    assert fake_hub.tree(REPO, "main") == [f"stages/stage-0{k}/{name}" for k in (1, 2, 3) for name in STAGE_FILES]

    card = fake_hub.store[REPO]["main"]["stages/stage-02/README.md"].decode()
    assert f'from_pretrained("{REPO}", subfolder="stages/stage-02", trust_remote_code=True)' in card
    assert "revision=" not in card
    data = _card_data(card)
    assert data["library_name"] == "transformers"
    assert data["base_model"] == "fake-org/cifar-resnet-tiny"
    assert data["datasets"] == ["digits"]
    assert "stage-02" in data["tags"]
    # The Hub card is rebuilt from trgl_stage.json: the stage's metrics and the run's per-module table.
    for text in (card, (stage_run / "stage-02" / "README.md").read_text()):
        assert "| accuracy | 0.5000 |" in text and "| 1 | 0.5000 |" in text and "| 2 | 0.7500 |" in text

    pixel_values = torch.randn(4, 1, 8, 8)
    pulled = fake_hub.materialize(REPO, "main", tmp_path / "pulled", subfolder="stages/stage-02")
    assert sorted(p.name for p in pulled.iterdir()) == STAGE_FILES
    torch.testing.assert_close(
        _logits(pulled, pixel_values), _logits(stage_run / "stage-02", pixel_values), rtol=0, atol=0
    )


def test_http_500_on_a_commit_raises_hub_push_error_and_a_retry_succeeds(fake_hub, api, stage_run, no_backoff_sleep):
    before = _tree_hashes(stage_run)
    fault = fake_hub.fail_next(None, status=500, method="POST", path=r"/commit/stage-02$")

    with pytest.raises(HubPushError) as caught:
        push_run_stages(stage_run, REPO, api=api)

    error = caught.value
    message = str(error)
    assert error.stage == 2 and error.repo_id == REPO
    assert "stage 2 (stage-02)" in message and REPO in message and "500" in message
    assert "intact" in message and f"push_run_stages({str(stage_run)!r}, {REPO!r}" in message
    assert isinstance(error.__cause__, HfHubHTTPError) and error.__cause__.response.status_code == 500
    assert fault.hits > 1 and len(no_backoff_sleep) == fault.hits - 1  # huggingface_hub retried the commit itself
    assert fake_hub.tree(REPO, "stage-01") == STAGE_FILES
    assert fake_hub.tree(REPO, "stage-02") == []  # created from the empty main, never committed to
    assert "stage-03" not in fake_hub.branches(REPO) and fake_hub.tree(REPO, "main") == []
    assert _tree_hashes(stage_run) == before
    _assert_local_run_loads(stage_run, torch.randn(2, 1, 8, 8))

    fake_hub.clear_faults()
    assert push_run_stages(stage_run, REPO, api=api) == {1: "stage-01", 2: "stage-02", 3: "stage-03"}
    for branch in ("main", "stage-01", "stage-02", "stage-03"):
        assert fake_hub.tree(REPO, branch) == STAGE_FILES


def test_a_transient_500_is_retried_by_huggingface_hub(fake_hub, api, stage_run, no_backoff_sleep):
    fault = fake_hub.fail_next(1, status=503, method="POST", path=r"/commit/stage-01$")
    push_stage(stage_run / "stage-01", REPO, 1, api=api)
    assert fault.hits == 1 and no_backoff_sleep == [1]
    assert fake_hub.tree(REPO, "stage-01") == STAGE_FILES


def test_connection_refused_raises_hub_push_error(tmp_path, fake_hub, stage_run, no_backoff_sleep):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    before = _tree_hashes(stage_run)

    with pytest.raises(HubPushError) as caught:
        push_run_stages(stage_run, REPO, api=HfApi(endpoint=f"http://127.0.0.1:{port}", token="hf_fake"))

    assert caught.value.stage == 1 and "stage 1 (stage-01)" in str(caught.value)
    assert isinstance(caught.value.__cause__, httpx2.ConnectError)
    assert _tree_hashes(stage_run) == before
    _assert_local_run_loads(stage_run, torch.randn(2, 1, 8, 8))

    assert push_run_stages(stage_run, REPO, api=HfApi(endpoint=fake_hub.endpoint, token="hf_fake"))[3] == "stage-03"
    assert fake_hub.tree(REPO, "main") == STAGE_FILES


@pytest.mark.skipif(not constants.HF_HUB_OFFLINE, reason="needs HF_HUB_OFFLINE=1 (tests/conftest.py sets it)")
def test_offline_mode_raises_hub_push_error(stage_run):
    with fakehub.start_fake_hub() as fake:  # huggingface_hub's own client: every request refused offline
        with pytest.raises(HubPushError) as caught:
            push_stage(stage_run / "stage-02", REPO, 2, api=HfApi(endpoint=fake.endpoint, token="hf_fake"))
        assert not fake.requests
    assert isinstance(caught.value.__cause__, OfflineModeIsEnabled)


def test_pushing_twice_replaces_the_tree(tmp_path, fake_hub, api, stage_run):
    first = tmp_path / "first" / "stage-02"
    shutil.copytree(stage_run / "stage-02", first)
    (first / "stale.txt").write_text("left over from an older push")
    (first / "old").mkdir()
    (first / "old" / "weights.bin").write_bytes(b"\0" * 8)

    for strategy, remote in (("branch", "stage-02"), ("subfolder", "stages/stage-02")):
        assert push_stage(first, REPO, 2, strategy=strategy, api=api) == remote
        assert push_stage(stage_run / "stage-02", REPO, 2, strategy=strategy, api=api) == remote
    assert fake_hub.tree(REPO, "stage-02") == STAGE_FILES
    assert fake_hub.tree(REPO, "main") == [f"stages/stage-02/{name}" for name in STAGE_FILES]

    # The same folder again: nothing changed, so no commit at all.
    commits = len(fake_hub.commits)
    push_stage(stage_run / "stage-02", REPO, 2, api=api)
    assert len(fake_hub.commits) == commits

    # A new branch starts as a copy of main: its tree is replaced too.
    push_stage(stage_run / "stage-03", REPO, 3, api=api)
    assert fake_hub.tree(REPO, "stage-03") == STAGE_FILES

    # The final model replaces the files of main but keeps the stages/ of the subfolder strategy.
    push_final(first, REPO, api=api)
    push_final(stage_run / "stage-03", REPO, api=api)
    assert fake_hub.tree(REPO, "main") == sorted(STAGE_FILES + [f"stages/stage-02/{name}" for name in STAGE_FILES])


def test_gitattributes_of_the_hub_is_kept(stage_run):
    with fakehub.start_fake_hub(gitattributes=True) as fake, fakehub.fake_hub_session():
        push_run_stages(stage_run, REPO, api=fake.api())
        for branch in ("main", "stage-01", "stage-02", "stage-03"):
            assert fake.tree(REPO, branch) == [".gitattributes", *STAGE_FILES]


def test_only_complete_stage_folders_are_pushed(tmp_path, stage_run):
    (stage_run / "stage-04").mkdir()  # no trgl_stage.json: not a finished stage
    (stage_run / "stage-04" / "config.json").write_text("{}")
    (stage_run / ".stage-05.tmp-xyz").mkdir()
    assert list(find_stage_folders(stage_run)) == [1, 2, 3]
    empty = tmp_path / "empty-run"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="No complete stage folder"):
        push_run_stages(empty, REPO, api=HfApi(endpoint="http://127.0.0.1:9", token="hf_fake"))


def test_bad_arguments_fail_before_any_request(stage_run):
    unreachable = HfApi(endpoint="http://127.0.0.1:9", token="hf_fake")
    with pytest.raises(ValueError, match="strategy"):
        push_stage(stage_run / "stage-01", REPO, 1, strategy="tag", api=unreachable)
    with pytest.raises(ValueError, match="stage 1, not stage 2"):
        push_stage(stage_run / "stage-01", REPO, 2, api=unreachable)
    with pytest.raises(ValueError):
        push_stage(stage_run / "stage-01", "not a repo id!", 1, api=unreachable)


def test_hub_push_error_names_the_stage_auto_class_and_the_run_folder(tmp_path, stage_run):
    cause = OSError("boom")
    error = HubPushError(2, REPO, "branch 'stage-02'", stage_run / "stage-02", cause)
    assert f"AutoModelForImageClassification.from_pretrained({str(stage_run / 'stage-02')!r}, " in str(error)
    assert "trust_remote_code=True)" in str(error)  # a conv-head stage ships its modeling code
    assert f"push_run_stages({str(stage_run)!r}, {REPO!r})" in str(error)

    bert = tmp_path / "bert-run" / "stage-01"
    bert.mkdir(parents=True)
    (bert / "config.json").write_text('{"architectures": ["BertForSequenceClassification"]}')
    message = str(HubPushError(1, REPO, "branch 'stage-01'", bert, cause))
    assert f"AutoModelForSequenceClassification.from_pretrained({str(bert)!r})" in message

    # Creating the repository failed: nothing local is a model, and the retry names the run folder itself.
    message = str(HubPushError(None, REPO, "repository", stage_run, cause))
    assert "Nothing local is affected" in message and f"push_run_stages({str(stage_run)!r}, {REPO!r})" in message
    assert "from_pretrained" not in message


@pytest.mark.parametrize("strategy", ["checkpoint", "all_checkpoints"])
def test_hub_strategies_that_push_checkpoints_are_refused_with_push_to_hub(tmp_path, strategy):
    settings = dict(output_dir=str(tmp_path / "run"), trgl_mode="sequential", max_steps=2, use_cpu=True,
                    report_to="none", hub_strategy=strategy)  # fmt: skip
    with pytest.raises(ValueError, match=r"resumes from its `output_dir`.*use `hub_strategy='every_save'`"):
        TRGLTrainingArguments(push_to_hub=True, hub_model_id=REPO, **settings)
    assert TRGLTrainingArguments(**settings).hub_strategy == strategy  # ignored without push_to_hub, as by Trainer


@pytest.mark.parametrize("timeout", [-1.0, "soon", True, float("inf")])
def test_a_bad_hub_finish_timeout_is_refused(tmp_path, timeout):
    with pytest.raises(ValueError, match="`trgl_hub_finish_timeout` must be a number of seconds >= 0"):
        TRGLTrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, trgl_hub_finish_timeout=timeout)


BOUND_S, SLACK_S = 1.0, 2.0


def test_a_push_failing_for_a_local_reason_is_reported_and_the_others_go_on(fake_hub, api, stage_run):
    (stage_run / "stage-01" / "trgl_stage.json").unlink()  # not a complete stage: push_stage refuses it
    pusher = hub_pusher.BackgroundPusher(stage_run, REPO, "branch", api=api)
    pusher.submit_stage(1, stage_run / "stage-01", final=False)
    pusher.submit_stage(2, stage_run / "stage-02", final=False)

    (error,) = pusher.finish(timeout=30)

    assert error.target == "branch 'stage-01'" and isinstance(error.error, FileNotFoundError)
    assert pusher.pushed == {"stage-02": "stage-02"} and fake_hub.tree(REPO, "stage-02") == STAGE_FILES
