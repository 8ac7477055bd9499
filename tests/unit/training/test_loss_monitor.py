"""The loss monitor: per-module means since the last log, and the first non-finite loss named by module and step."""

import math

import pytest
import torch

from trgl_hf.training.loss_monitor import LossMonitor, NonFiniteLossError


def record(monitor, index, step, loss, transport=0.0):
    value = torch.tensor(loss)
    monitor.record(index, step, value, value, torch.tensor(transport))


def test_log_fields_average_each_module_since_the_last_log():
    monitor = LossMonitor()
    record(monitor, 0, 1, 2.0, 0.5)
    record(monitor, 0, 2, 4.0, 1.5)
    record(monitor, 1, 2, 1.0)
    assert monitor.log_fields() == {"module_1_task_loss": 3.0, "module_1_transport": 1.0,
                                    "module_2_task_loss": 1.0, "module_2_transport": 0.0}  # fmt: skip
    assert monitor.log_fields() == {}
    monitor.check("module-01")  # all finite: no error


def test_the_first_non_finite_loss_is_reported_with_its_module_and_step():
    monitor = LossMonitor()
    record(monitor, 0, 1, 1.0)
    record(monitor, 1, 3, math.nan)
    record(monitor, 1, 5, math.inf)
    with pytest.raises(NonFiniteLossError, match=r"module 2 became nan at step 3 of phase lap-1-module-02"):
        monitor.check("lap-1-module-02")
    monitor.reset()
    monitor.check("next")
