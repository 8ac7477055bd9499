"""FSDP2 per module (`trgl_hf.distributed.fsdp`): 2 CPU processes (gloo) train like 1 process with the same global
batch, in every mode, switched on by the training arguments or by an accelerate FSDP config; stages load natively (the
refusals: tests/unit/distributed/test_fsdp.py)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trgl_hf import TRGLModel

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "tests" / "scripts" / "fsdp_train.py"
MODES = ("parallel", "sequential", "multilap")
LAUNCHERS = {
    "arguments": ["--multi_gpu"],  # the script passes fsdp=True, fsdp_config={"fsdp_version": 2}
    "accelerate": ["--use_fsdp", "--fsdp_version", "2"],  # what an accelerate config with distributed_type FSDP sets
}


def run(command: list[str], succeeds: bool = True, **env: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert (result.returncode == 0) == succeeds, result.stderr[-4000:]


def launcher(switch: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", *LAUNCHERS[switch], "--num_processes", "2",
            "--main_process_port", "0", "--num_machines", "1", str(SCRIPT)]  # fmt: skip


def train_both(tmp_path: Path, family: str, switch: str, modes: tuple[str, ...], **env: str) -> tuple[Path, Path]:
    sharded, alone = tmp_path / "fsdp", tmp_path / "alone"
    run(launcher(switch) + [str(sharded), family, *modes], **env)
    spec = importlib.util.spec_from_file_location("fsdp_train", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.train(alone, family, list(modes), world=1)  # the reference, in this process
    return sharded, alone


def weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every weight of a folder: one `model.safetensors`, or the module files of a 1-process run's progress folder."""
    files = [folder / "model.safetensors"] if (folder / "model.safetensors").exists() else folder.glob("*.safetensors")
    found = {k: v for path in files for k, v in load_file(path).items()}
    return {k: v for k, v in found.items() if not k.endswith("num_batches_tracked")}


def grad_norms(run_dir: Path) -> list[float]:
    """The gradient norms the run logged at every step (before clipping)."""
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["grad_norm"] for entry in history if "grad_norm" in entry]


def check_stages(run_dir: Path, final: Path, family: str) -> None:
    """Every stage loads with plain `from_pretrained` in this one process and gives its module's logits."""
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    model = TRGLModel.from_pretrained(final).eval()
    torch.manual_seed(0)
    if family in ("bert", "gpt2"):
        inputs = {"input_ids": torch.randint(1, 50, (4, 8)), "attention_mask": torch.ones(4, 8, dtype=torch.long)}
        auto = AutoModelForSequenceClassification
    else:
        inputs, auto = {"pixel_values": torch.randn(4, 3, 16, 16)}, AutoModelForImageClassification
    with torch.no_grad():
        expected = model(**inputs).module_logits
        for stage in range(1, model.num_modules + 1):
            exported = auto.from_pretrained(run_dir / f"stage-{stage:02d}").eval()
            assert "TRGL" not in type(exported).__name__  # a native model, no remote code
            torch.testing.assert_close(exported(**inputs).logits, expected[:, stage - 1], rtol=1e-5, atol=1e-5)


def check_parity(sharded: Path, alone: Path, family: str, modes: tuple[str, ...]) -> None:
    initial = load_file(sharded / "init.safetensors")
    for mode in modes:
        got, expected = weights(sharded / mode / "final"), weights(alone / mode / "final")
        assert got.keys() == expected.keys()
        for name in got:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-5, msg=f"{mode}: {name}")
        moved = [name for name in got if not torch.equal(got[name], initial[name])]
        assert any("heads.0" in name for name in moved) and any("heads.1" in name for name in moved), mode
        run_dir = sharded / mode / "run"
        norms = [grad_norms(folder / mode / "run") for folder in (sharded, alone)]
        assert len(norms[0]) == len(norms[1]) > 0 and max(norms[1]) > 0.1  # clipping (max_grad_norm=0.1) acts
        torch.testing.assert_close(norms[0], norms[1], rtol=1e-5, atol=1e-6)  # the global norm of sharded gradients
        progress = sorted(run_dir.glob("trgl-progress-*"))[-1]  # the last phase's full checkpoint
        for name, value in weights(progress).items():
            torch.testing.assert_close(value, got[name], msg=f"{progress.name}: {name}")
        check_stages(run_dir, sharded / mode / "final", family)
        saved = sharded / mode / "saved"  # save_model: the chosen stage, gathered whole
        stage = json.loads((saved / "trgl_stage.json").read_text())["stage"]
        for name, value in weights(saved).items():
            torch.testing.assert_close(value, weights(run_dir / f"stage-{stage:02d}")[name], msg=f"saved: {name}")


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    ("family", "switch", "modes", "reshard"),
    [
        pytest.param("bert", "arguments", ("sequential",), "true", id="bert-arguments-sequential"),  # default suite
        pytest.param("bert", "arguments", MODES, "true", id="bert-arguments-all", marks=pytest.mark.slow),
        pytest.param("bert", "arguments", MODES, "false", id="bert-shard_grad_op-all", marks=pytest.mark.slow),
        pytest.param("gpt2", "arguments", MODES, "true", id="gpt2-arguments-all", marks=pytest.mark.slow),
        pytest.param("resnet", "accelerate", MODES, "true", id="resnet-accelerate-all", marks=pytest.mark.slow),
    ],
)
def test_fsdp_matches_one_process_with_the_same_global_batch(tmp_path, family, switch, modes, reshard):
    """Parameters after training equal a 1-process run's; the last `trgl-progress-NN` folder holds the full weights
    and `save_model` the chosen stage, gathered; the stages load natively and give the trained heads' logits.
    `reshard="false"`: `reshard_after_forward=False` (`"shard_grad_op"`)."""
    check_parity(*train_both(tmp_path, family, switch, modes, TRGL_TEST_RESHARD=reshard), family, modes)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_fsdp_run_killed_in_a_phase_resumes_to_the_same_weights(tmp_path):
    """Phases are recorded as full `trgl-progress-NN` weights, with the multilap optimizers' states gathered whole:
    the run resumes from them (sharded again) to the weights of the run that was never killed."""
    whole, killed, adam = tmp_path / "whole", tmp_path / "killed", {"TRGL_TEST_OPTIM": "adamw_torch"}
    run(launcher("arguments") + [str(whole), "bert", "multilap"], **adam)
    run(launcher("arguments") + [str(killed), "bert", "multilap"], succeeds=False, TRGL_TEST_STOP_IN="lap-2-module-01",
        **adam)  # fmt: skip
    assert not (killed / "multilap" / "final").exists()
    lap_states = next((killed / "multilap" / "run").glob("trgl-progress-*/trgl_lap_optimizers.pt"))
    assert torch.load(lap_states, weights_only=True)  # whole tensors, readable without a process group
    run(launcher("arguments") + [str(killed), "bert", "multilap"], TRGL_TEST_RESUME="1", **adam)
    expected = weights(whole / "multilap" / "final")
    for name, value in weights(killed / "multilap" / "final").items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)
