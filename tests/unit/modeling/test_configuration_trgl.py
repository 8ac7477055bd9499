import math

import pytest

from trgl_hf import TRGLConfig


def test_halves_schedule_gives_tau_over_two_to_first_half():
    assert TRGLConfig(num_modules=4, tau=2.0).module_taus() == [1.0, 1.0, 2.0, 2.0]
    assert TRGLConfig(num_modules=3, tau=2.0).module_taus() == [1.0, 2.0, 2.0]
    assert TRGLConfig(num_modules=1, tau=2.0).module_taus() == [2.0]


def test_constant_and_explicit_taus():
    assert TRGLConfig(num_modules=3, tau=5.0, tau_schedule="constant").module_taus() == [5.0] * 3
    assert TRGLConfig(num_modules=2, tau=[1.0, 3.0]).module_taus() == [1.0, 3.0]


def test_vangl_has_no_transport_term():
    assert all(math.isinf(t) for t in TRGLConfig(num_modules=2, use_transport=False).module_taus())


def test_split_fixes_num_modules():
    assert TRGLConfig(split=[2, 1, 3]).num_modules == 3


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_modules": 0}, "num_modules"),
        ({"tau": 0.0}, "tau"),
        ({"tau": -1.0}, "tau"),
        ({"tau": float("nan")}, "tau"),
        ({"num_modules": 2, "tau": [1.0, 2.0, 3.0]}, "tau"),
        ({"split": [2, 0]}, "split"),
        ({"split_policy": "random"}, "split_policy"),
        ({"tau_schedule": "linear"}, "tau_schedule"),
        ({"aux_head": "mlp3"}, "aux_head"),
        ({"label_smoothing": 1.5}, "label_smoothing"),
        ({"multiplier_period": 0}, "multiplier_period"),
    ],
)
def test_bad_configuration_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TRGLConfig(**kwargs)


def test_config_round_trips_through_json(tmp_path):
    config = TRGLConfig(num_modules=3, tau=[1.0, 2.0, 4.0], use_transport=False, label_smoothing=0.1)
    config.save_pretrained(tmp_path)
    loaded = TRGLConfig.from_pretrained(tmp_path)
    assert loaded.tau == [1.0, 2.0, 4.0] and loaded.use_transport is False and loaded.label_smoothing == 0.1
