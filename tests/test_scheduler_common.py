"""diffusers' common scheduler checks (``SchedulerCommonTest`` in diffusers' repository, not shipped with the
wheel), re-created for the project's four schedulers.

Adapted where our schedulers are stricter than diffusers' on purpose: ``step`` only accepts timesteps of the
current schedule (diffusers' checks step at 0 and 1 whatever the schedule), and ``trained_betas`` must have
``num_train_timesteps`` entries (diffusers silently accepts two betas with a 1000-step config).
"""

import inspect
import json
import logging
import tempfile
import warnings

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.utils.dummy_pt_objects import DummyObject

import accelerated_diffusion as ad

CLASSES = list(dict.fromkeys(ad.samplers.scheduler_classes().values()))  # the registry's drop-in schedulers, once each
NUM_INFERENCE_STEPS = 10


def scheduler_config(**overrides):
    cfg = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=True)
    cfg.update(overrides)
    return cfg


def dummy_sample():
    """diffusers' ``dummy_sample_deter``: a deterministic (4, 3, 8, 8) ramp in [0, 1)."""
    n = 4 * 3 * 8 * 8
    return (torch.arange(n) / n).reshape(3, 8, 8, 4).permute(3, 0, 1, 2).contiguous()


def first_step(scheduler, return_dict=True, seed=0):
    """One step at the first timestep with diffusers' dummy residual ``0.1 * sample``."""
    scheduler.set_timesteps(NUM_INFERENCE_STEPS)
    sample = dummy_sample()
    t = scheduler.timesteps[0]
    return scheduler.step(
        0.1 * sample, t, sample, generator=torch.Generator().manual_seed(seed), return_dict=return_dict
    )


def save_and_reload(scheduler):
    with tempfile.TemporaryDirectory() as tmp:
        scheduler.save_pretrained(tmp)
        with open(f"{tmp}/scheduler_config.json") as f:
            saved = json.load(f)
        return type(scheduler).from_pretrained(tmp), saved


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(prediction_type="v_prediction"),
        dict(timestep_spacing="trailing", clip_sample=False),
        dict(thresholding=True),
    ],
    ids=["default", "v", "trailing", "thresholding"],
)
def test_save_load_gives_same_outputs(cls, overrides):
    """``check_over_configs`` / ``test_from_save_pretrained``: a reloaded scheduler steps identically."""
    scheduler = cls(**scheduler_config(**overrides))
    new, saved = save_and_reload(scheduler)
    assert saved["_class_name"] == cls.__name__
    out, new_out = first_step(scheduler).prev_sample, first_step(new).prev_sample
    assert torch.sum(torch.abs(out - new_out)) < 1e-5


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_from_pretrained_round_trips_the_config(cls):
    scheduler = cls(**scheduler_config())
    new, _ = save_and_reload(scheduler)
    cfg = dict(scheduler.config)
    del cfg["_use_default_values"]
    assert cfg == dict(new.config)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_step_shape(cls):
    scheduler = cls(**scheduler_config())
    sample = dummy_sample()
    for position in (0, NUM_INFERENCE_STEPS - 1):
        scheduler.set_timesteps(NUM_INFERENCE_STEPS)
        for t in scheduler.timesteps[: position + 1]:
            out = scheduler.step(0.1 * sample, t, sample, generator=torch.Generator().manual_seed(0))
        assert out.prev_sample.shape == sample.shape == out.pred_original_sample.shape


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_dict_and_tuple_outputs_are_equal(cls):
    scheduler = cls(**scheduler_config())
    as_dict = first_step(scheduler, return_dict=True)
    as_tuple = first_step(scheduler, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    for a, b in zip(as_tuple, (as_dict.prev_sample, as_dict.pred_original_sample)):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.equal(as_dict[0], as_dict.prev_sample)  # BaseOutput indexing, as pipelines use


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_public_api(cls):
    scheduler = cls(**scheduler_config())
    for name in ("init_noise_sigma", "scale_model_input", "step", "set_timesteps", "add_noise", "order", "timesteps"):
        assert hasattr(scheduler, name), name
    sample = dummy_sample()
    assert scheduler.scale_model_input(sample, 0.0).shape == sample.shape
    assert scheduler.order == 1 and len(scheduler) == 1000
    params = inspect.signature(scheduler.step).parameters
    assert list(params)[:5] == ["model_output", "timestep", "sample", "generator", "return_dict"]
    assert "timesteps" in inspect.signature(scheduler.set_timesteps).parameters
    assert "device" in inspect.signature(scheduler.set_timesteps).parameters
    assert "kwargs" not in inspect.signature(cls.__init__).parameters and not cls._deprecated_kwargs


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_add_noise_matches_diffusers(cls):
    scheduler = cls(**scheduler_config())
    ref = DDPMScheduler(**scheduler_config())
    scheduler.set_timesteps(100)
    sample = dummy_sample()
    noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(0))
    t = scheduler.timesteps[5][None]
    noised = scheduler.add_noise(sample, noise, t)
    assert noised.shape == sample.shape
    torch.testing.assert_close(noised, ref.add_noise(sample, noise, t), rtol=0, atol=0)
    per_sample = torch.tensor([0, 10, 500, 999])  # one timestep per batch entry
    torch.testing.assert_close(scheduler.add_noise(sample, noise, per_sample), ref.add_noise(sample, noise, per_sample))
    torch.testing.assert_close(
        scheduler.get_velocity(sample, noise, per_sample), ref.get_velocity(sample, noise, per_sample)
    )
    with pytest.raises(ValueError, match="timesteps must lie"):
        scheduler.add_noise(sample, noise, torch.tensor([1000]))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_trained_betas(cls):
    betas = np.linspace(0.05, 0.3, 20)
    scheduler = cls(**scheduler_config(num_train_timesteps=20), trained_betas=betas)
    new, saved = save_and_reload(scheduler)
    assert scheduler.betas.tolist() == new.betas.tolist() == torch.tensor(betas, dtype=torch.float32).tolist()
    assert saved["trained_betas"] == pytest.approx(betas.tolist())
    # the same betas given as a schedule give the same sampler
    linear = cls(**scheduler_config(num_train_timesteps=20, beta_start=0.05, beta_end=0.3))
    torch.testing.assert_close(first_step(scheduler).prev_sample, first_step(linear).prev_sample)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_compatibles_round_trip(cls):
    scheduler = cls(**scheduler_config())
    comps = [c for c in scheduler.compatibles if not isinstance(c, DummyObject)]
    assert DDIMScheduler in comps and DDPMScheduler in comps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("diffusers").setLevel(logging.ERROR)
        for comp_cls in comps:
            comp = comp_cls.from_config(scheduler.config)
            assert comp is not None
            new = cls.from_config(comp.config)
            new_cfg = {k: v for k, v in new.config.items() if k in scheduler.config}
            diff = {k: v for k, v in new.config.items() if k not in scheduler.config}
            assert new_cfg == dict(scheduler.config), comp_cls.__name__
            assert set(diff).intersection(inspect.signature(cls.__init__).parameters) == set()


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_getattr(cls):
    scheduler = cls(**scheduler_config())
    scheduler.dummy_attribute = 5
    scheduler.register_to_config(test_attribute=5)
    assert scheduler.dummy_attribute == 5
    with pytest.warns(FutureWarning):
        assert scheduler.test_attribute == 5
    with pytest.raises(AttributeError, match="does_not_exist"):
        scheduler.does_not_exist
