"""The distributed strategies: which one a run gets, and what the single-process one does to gradients and
multipliers (the several-process ones are exercised by tests/integration/distributed/)."""

import torch

from trgl_hf.distributed.fsdp import FSDPSettings
from trgl_hf.distributed.strategy import FullyShardedModules, SingleProcess, distributed_strategy


class TwoModules:
    def __init__(self):
        self.params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))]
        self.params[0].grad = torch.tensor([3.0, 4.0])  # norm 5
        self.params[1].grad = torch.tensor([12.0])
        self.trainable_modules = [0, 1]
        self.steps = []
        self.transport_schedule = self

    def module_parameters(self, index):
        return [self.params[index]]

    def after_step(self, step, losses):
        self.steps.append((step, losses))


def test_one_process_gets_the_single_process_strategy_and_fsdp_settings_their_own():
    assert type(distributed_strategy(None)) is SingleProcess
    settings = FSDPSettings()
    strategy = distributed_strategy(settings)
    assert isinstance(strategy, FullyShardedModules) and strategy.fsdp is settings


def test_each_module_is_clipped_on_its_own_and_the_global_norm_returned():
    net, strategy = TwoModules(), SingleProcess()
    norm = strategy.clip(net, max_norm=1.0)
    torch.testing.assert_close(norm, torch.tensor(13.0))  # sqrt(5^2 + 12^2), before clipping
    for param in net.params:
        torch.testing.assert_close(param.grad.norm(), torch.tensor(1.0), atol=1e-5, rtol=0)


def test_a_finished_step_updates_the_multipliers_with_this_processes_losses():
    net, strategy = TwoModules(), SingleProcess()
    strategy.start_step(net)
    strategy.finish_step(net, {0: torch.tensor(0.5)}, step=4)
    assert net.steps == [(4, {0: torch.tensor(0.5)})]
