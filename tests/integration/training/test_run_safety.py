"""Run safety: a run killed at any write point resumes to the same stages without rewriting a finished one; one run
per output folder; damaged stages are exported again; files follow the umask; non-finite metrics never reach a card."""

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments
from trgl_hf.export import atomic_files, checkpointing
from trgl_hf.training.run_lock import LOCK_FILE, RunLock

from ...conftest import tiny_cifar_resnet

ROOT = Path(__file__).resolve().parents[3]


class Crash(BaseException):
    """A kill at a write point (a BaseException: nothing in the library may swallow it)."""


def run(out, train, resume=False, **overrides):
    model = TRGLModel.from_base(tiny_cifar_resnet(num_labels=10, num_channels=1), TRGLConfig(num_modules=3))
    settings = dict(output_dir=str(out), trgl_mode="sequential", max_steps=2, per_device_train_batch_size=16,
                    learning_rate=0.05, optim="sgd", report_to="none", save_strategy="no", disable_tqdm=True,
                    use_cpu=True, seed=0)  # fmt: skip
    settings.update(overrides)
    trainer = TRGLTrainer(model=model, args=TRGLTrainingArguments(**settings), train_dataset=train)
    trainer.train(resume_from_checkpoint=resume or None)
    return trainer


def stage_files(out):
    """Every stage file's bytes (the cards' load snippets name the run's folder: written as `<out>`) and mtime."""
    return {p.relative_to(out).as_posix(): (p.read_bytes().replace(str(out).encode(), b"<out>"), p.stat().st_mtime_ns)
            for p in sorted(Path(out).glob("stage-*/*")) if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def train(digits):
    return digits["train"].select(range(64))


SETTINGS = {
    "sequential, no checkpoints": dict(trgl_mode="sequential"),
    "multilap, checkpoints": dict(trgl_mode="multilap", trgl_laps=2, max_steps=4, save_strategy="steps", save_steps=1),
}


def kind(label):
    """A write point without its phase / stage number, e.g. `replace trgl-progress`."""
    return label.split("-0")[0].split(" lap-")[0].split(" module-")[0]


def kill_and_resume(setting, train, tmp_path, monkeypatch, every_point):
    overrides = SETTINGS[setting]
    points: list[str] = []
    monkeypatch.setattr(atomic_files, "WRITE_POINT_HOOKS", [points.append])
    run(tmp_path / "reference", train, **overrides)
    reference = {name: data for name, (data, _) in stage_files(tmp_path / "reference").items()}
    assert len(points) >= 12 and sum(name.endswith("model.safetensors") for name in reference) == 3
    chosen = range(1, len(points) + 1)
    if not every_point:  # the first and last point of each kind (stamp, progress, state, removal, stage)
        firsts = {kind(label): n for n, label in reversed(list(enumerate(points, start=1)))}
        lasts = {kind(label): n for n, label in enumerate(points, start=1)}
        chosen = sorted({*firsts.values(), *lasts.values()})
    for n in chosen:
        out = tmp_path / f"killed-at-{n}"
        seen = []

        def kill(label, seen=seen, n=n):
            seen.append(label)
            if len(seen) == n:
                raise Crash(label)

        monkeypatch.setattr(atomic_files, "WRITE_POINT_HOOKS", [kill])
        with pytest.raises(Crash):
            run(out, train, **overrides)
        monkeypatch.setattr(atomic_files, "WRITE_POINT_HOOKS", [])
        state = json.loads((out / "trgl_state.json").read_text()) if (out / "trgl_state.json").exists() else {}
        finished = {f"stage-{int(k):02d}" for k in state.get("stages", {})}
        before = {name: value for name, value in stage_files(out).items() if name.split("/")[0] in finished}
        if state or any(out.glob("phases/*/checkpoint-*")):
            run(out, train, resume=True, **overrides)
        else:  # killed before anything was recorded: nothing to resume, start again
            run(out, train, **overrides)
        after = stage_files(out)
        assert {name: data for name, (data, _) in after.items()} == reference, f"killed at {seen[-1]} (#{n})"
        for name, value in before.items():
            assert after[name] == value, f"{name} was rewritten after a kill at {seen[-1]} (#{n})"


@pytest.mark.parametrize(
    "setting",
    [pytest.param(name, marks=pytest.mark.slow) if "multilap" in name else name for name in sorted(SETTINGS)],
)  # the multilap one writes ~3x more points (3 min): run it with -m slow
def test_a_kill_at_each_kind_of_write_point_resumes_to_the_uninterrupted_stages(setting, train, tmp_path, monkeypatch):
    kill_and_resume(setting, train, tmp_path, monkeypatch, every_point=False)


@pytest.mark.slow
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_a_kill_at_every_write_point_resumes_to_the_uninterrupted_stages(setting, train, tmp_path, monkeypatch):
    kill_and_resume(setting, train, tmp_path, monkeypatch, every_point=True)


def test_a_damaged_stage_is_exported_again_and_intact_stages_are_not_touched(train, tmp_path):
    out = tmp_path / "run"
    run(out, train)
    files = stage_files(out)
    weights = out / "stage-02" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    run(out, train, resume=True)
    after = stage_files(out)
    assert after["stage-02/model.safetensors"][0] == files["stage-02/model.safetensors"][0]
    for name in ("stage-01/model.safetensors", "stage-03/model.safetensors", "stage-01/config.json"):
        assert after[name] == files[name]


def test_a_truncated_remote_code_file_is_restored_on_resume(train, tmp_path):
    out = tmp_path / "run"
    run(out, train)
    files = stage_files(out)
    modeling = out / "stage-02" / "modeling_trgl_stage.py"
    modeling.write_bytes(modeling.read_bytes()[:64])
    run(out, train, resume=True)
    after = stage_files(out)
    assert after["stage-02/modeling_trgl_stage.py"][0] == files["stage-02/modeling_trgl_stage.py"][0]
    for name in ("stage-01/modeling_trgl_stage.py", "stage-03/model.safetensors"):
        assert after[name] == files[name]


def test_resuming_a_finished_run_restores_its_weights(train, tmp_path):
    trained = run(tmp_path / "run", train).model
    resumed = run(tmp_path / "run", train, resume=True).model
    for (name, a), b in zip(trained.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_files_follow_the_umask(train, tmp_path):
    previous = os.umask(0o022)
    try:
        run(tmp_path / "run", train)
    finally:
        os.umask(previous)
    stage = tmp_path / "run" / "stage-01"
    assert stage.stat().st_mode & 0o777 == 0o755
    assert (stage / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "run" / "trgl_state.json").stat().st_mode & 0o777 == 0o644


def test_non_finite_metrics_never_reach_a_card(train, tmp_path, caplog):
    from trgl_hf.training.guards import finite_metrics

    assert finite_metrics({"accuracy": 0.5, "loss": float("nan")}, 1) == {"accuracy": 0.5, "loss": None}
    assert "not finite" in caplog.text
    model = TRGLModel.from_base(tiny_cifar_resnet(num_labels=10, num_channels=1), TRGLConfig(num_modules=3))
    info = {"metrics": {"loss": None, "accuracy": 0.5}, "module_metrics": {"1": {"loss": None, "accuracy": 0.5}}}
    checkpointing.save_stage(model.export_stage(1), tmp_path / "stage-01", 1, 3, info)
    card = (tmp_path / "stage-01" / "README.md").read_text()
    assert "| loss | not finite |" in card and "| 1 | 0.5000 | not finite |" in card and "nan" not in card.lower()


def test_a_stale_lock_of_a_dead_process_is_taken_over(train, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_FILE).write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead.stdout)}))
    run(out, train)
    assert (out / "stage-03" / "model.safetensors").exists() and not (out / LOCK_FILE).exists()


def test_an_empty_lock_left_by_a_run_killed_while_taking_it_is_taken_over(train, tmp_path, caplog):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text("")
    os.utime(out / LOCK_FILE, (time.time() - 60, time.time() - 60))
    with caplog.at_level(logging.WARNING, logger="trgl_hf"):
        run(out, train)
    assert (out / "stage-03" / "model.safetensors").exists() and not (out / LOCK_FILE).exists()
    assert "Taking over" in caplog.text and "names no owner (empty)" in caplog.text


def test_a_young_torn_lock_is_waited_for_and_a_live_owner_that_writes_itself_in_keeps_the_folder(tmp_path):
    live = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()})
    (tmp_path / LOCK_FILE).write_text("")  # a live run between creating its lock and writing it
    writer = threading.Timer(0.2, (tmp_path / LOCK_FILE).write_text, [live])
    writer.start()
    started = time.time()
    with pytest.raises(ValueError, match="in use by another run"):
        RunLock(tmp_path, grace=1.0).acquire()
    writer.join()
    assert time.time() - started >= 0.2 and (tmp_path / LOCK_FILE).read_text() == live
    (tmp_path / LOCK_FILE).write_text('{"host": "cut sho')  # a torn record nobody completes: stale after the grace
    lock = RunLock(tmp_path, grace=0.3).acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


@pytest.mark.parametrize("hard_links", [True, False])
def test_the_lock_appears_with_its_owner_and_is_released_only_by_it(tmp_path, monkeypatch, hard_links):
    seen = []
    real_link = os.link

    def link(source, target):
        if not hard_links:
            raise PermissionError(1, "Operation not permitted")  # a filesystem without hard links
        real_link(source, target)
        seen.append(json.loads(Path(target).read_text()))  # the lock exists only with its record

    monkeypatch.setattr(os, "link", link)
    lock = RunLock(tmp_path).acquire()
    assert seen == ([json.loads((tmp_path / LOCK_FILE).read_text())] if hard_links else [])
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert [p.name for p in tmp_path.iterdir()] == [LOCK_FILE]  # no temporary file left
    with pytest.raises(ValueError, match="in use by another run"):
        RunLock(tmp_path).acquire()
    other = json.dumps({"host": "elsewhere", "pid": 1})  # the folder was taken over (e.g. after a manual delete)
    (tmp_path / LOCK_FILE).write_text(other)
    lock.release()
    assert (tmp_path / LOCK_FILE).read_text() == other


@pytest.mark.multiprocess
def test_two_runs_into_one_folder_one_is_refused_the_other_intact(train, tmp_path):
    out = tmp_path / "run"
    script = (
        f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); import trgl_hf\n"
        "from trgl_hf import TRGLTrainer\n"
        "from tests.integration.training.test_run_safety import run\n"
        "class Slow(trgl_hf.TRGLTrainer): pass\n"
        "train = trgl_hf.load_digits_dataset()['train'].select(range(64))\n"
        "import trgl_hf.training.trainer as t\n"
        "step = t.TRGLTrainer.training_step\n"
        "def slow(*a, **k):\n    time.sleep(0.3)\n    return step(*a, **k)\n"
        "t.TRGLTrainer.training_step = slow\n"
        f"run({str(out)!r}, train, max_steps=6)\n"
    )
    first = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 120
    while not (out / LOCK_FILE).exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.1)
    assert (out / LOCK_FILE).exists(), "the first run never took the folder"
    with pytest.raises(ValueError, match="in use by another run"):
        run(out, train)
    assert first.wait(timeout=300) == 0
    for stage in (1, 2, 3):
        folder = out / f"stage-{stage:02d}"
        assert TRGLModel is not None and (folder / "model.safetensors").exists()
        from transformers import AutoModelForImageClassification

        AutoModelForImageClassification.from_pretrained(folder)
