"""Multilap optimizer states: kept after a module's non-final lap, handed to its next lap, never kept otherwise."""

import torch

from trgl_hf.training.lap_optimizers import LapOptimizerStore
from trgl_hf.training.phases import Phase


def lap(lap: int, module: int = 0, laps: int = 2) -> Phase:
    return Phase(f"lap-{lap}-module-{module + 1:02d}", (module,), 1.0, -1, (), module + 1, lap=lap, laps=laps)


def optimizer_and_schedule():
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([param], lr=0.1)
    param.grad = torch.ones(2)
    optimizer.step()
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def test_a_persisted_state_reaches_the_same_modules_next_lap_only():
    store, (optimizer, scheduler) = LapOptimizerStore(persist=True), optimizer_and_schedule()
    store.keep(lap(1), optimizer, scheduler)
    assert store.saved(lap(2))["optimizer"]["state"][0]["step"] == 1
    assert store.saved(lap(2, module=1)) is None
    store.keep(lap(2, module=1), optimizer, scheduler)  # a last lap: nothing is kept for later
    assert 1 not in store.states


def test_fresh_optimizers_keep_nothing():
    store, (optimizer, scheduler) = LapOptimizerStore(persist=False), optimizer_and_schedule()
    store.keep(lap(1), optimizer, scheduler)
    assert store.states == {} and store.saved(lap(2)) is None


def test_a_lap_finished_in_a_checkpoint_leaves_the_checkpoints_state(tmp_path):
    store, (optimizer, scheduler) = LapOptimizerStore(persist=True), optimizer_and_schedule()
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp_path / "scheduler.pt")
    store.keep_from_checkpoint(lap(1), tmp_path)
    torch.testing.assert_close(store.saved(lap(2))["optimizer"]["state"][0]["exp_avg"],
                               optimizer.state_dict()["state"][0]["exp_avg"])  # fmt: skip
