"""The transport schedule: the one rule for tau, halves, constants, multipliers and VanGL."""

import math

import pytest
import torch

from trgl_hf import TRGLConfig
from trgl_hf.modeling.transport import TransportSchedule


def test_weights_follow_tau_and_vangl_is_zero():
    assert TransportSchedule(TRGLConfig(num_modules=1, tau=2.0)).weight(0) == 0.25
    assert TransportSchedule(TRGLConfig(num_modules=1, tau=math.inf)).weight(0) == 0.0
    assert TransportSchedule(TRGLConfig(num_modules=2, use_transport=False)).weight(1) == 0.0
    halves = TransportSchedule(TRGLConfig(num_modules=4, tau=2.0))
    assert [halves.weight(k) for k in range(4)] == [0.5, 0.5, 0.25, 0.25]
    assert TransportSchedule(TRGLConfig(num_modules=2, tau=[1.0, 4.0])).describe() == [1.0, 4.0]
    assert TransportSchedule(TRGLConfig(num_modules=2, use_transport=False)).describe() == [None, None]


def test_multipliers_weigh_one_over_lambda_and_update_every_period():
    config = TRGLConfig(num_modules=2, tau_schedule="multipliers", multiplier_period=3, multiplier_step=0.5)
    multipliers = torch.ones(2)
    schedule = TransportSchedule(config, multipliers)
    assert schedule.describe() == "multipliers"
    for step in (1, 2):
        schedule.after_step(step, {0: torch.tensor(2.0), 1: torch.tensor(4.0)})
    assert multipliers.tolist() == [1.0, 1.0]
    schedule.after_step(3, {0: torch.tensor(2.0), 1: torch.tensor(4.0)})
    assert multipliers.tolist() == [2.0, 3.0]
    assert float(schedule.weight(1)) == pytest.approx(1 / 3)


def test_a_tau_list_and_multipliers_are_refused_together():
    with pytest.raises(ValueError, match="multipliers"):
        TRGLConfig(num_modules=2, tau=[1.0, 2.0], tau_schedule="multipliers")
