"""The schedulers run unmodified in diffusers' DDPMPipeline, DDIMPipeline and StableDiffusionPipeline (tiny,
randomly initialised components built here and by ``experiments.toy_pipelines.tiny_random_stable_diffusion``; no
downloads), and InitNoiseDDPMPipeline honours init_noise_sigma."""

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

import accelerated_diffusion as ad
from accelerated_diffusion.pipelines import InitNoiseDDPMPipeline
from accelerated_diffusion.experiments.toy_pipelines import tiny_random_stable_diffusion
from accelerated_diffusion.models import eps_fn
from conftest import random_unet

NAMES = list(ad.samplers.scheduler_classes())  # the samplers with a drop-in scheduler, from the registry
STOCHASTIC = tuple(n for n in NAMES if ad.samplers.spec(n).stochastic)


class CallRecorder:
    """Forward pre-hook recording each call's sample input (a copy) on a model."""

    def __init__(self, model):
        self.inputs = []
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.inputs.append((args[0] if args else kwargs["sample"]).detach().clone())


@pytest.fixture(scope="module")
def unet():
    config = dict(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    return random_unet(config, seed=0)


def ddpm_pipe(pipeline_cls, unet, scheduler):
    pipe = pipeline_cls(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("name", NAMES)
def test_ddpm_pipeline_one_line_swap(unet, name):
    pipe = ddpm_pipe(DDPMPipeline, unet, DDPMScheduler(clip_sample=True))
    pipe.scheduler = ad.samplers.scheduler_for(name, pipe.scheduler.config)
    rec = CallRecorder(pipe.unet)
    try:
        img = pipe(
            batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="np"
        ).images
        again = pipe(
            batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="np"
        ).images
    finally:
        rec.handle.remove()
    assert img.shape == (2, 8, 8, 3) and (img >= 0).all() and (img <= 1).all()
    assert len(rec.inputs) == 2 * len(pipe.scheduler.timesteps) == 6  # NFE = len(timesteps)
    assert (img == again).all()  # seeded


def test_ddpm_pipeline_ignores_init_noise_sigma_ours_honours_it(unet):
    shape = (2, 3, 8, 8)
    for pipeline_cls, scaled in ((DDPMPipeline, False), (InitNoiseDDPMPipeline, True)):
        pipe = ddpm_pipe(pipeline_cls, unet, ad.AcceleratedDDPMScheduler(clip_sample=False))
        rec = CallRecorder(pipe.unet)
        try:
            pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=4, output_type="pt")
        finally:
            rec.handle.remove()
        sigma = pipe.scheduler.init_noise_sigma
        assert sigma > 1.1  # sqrt(1 + (1 - alpha_T)/2) with 4 leading steps of the DDPM schedule
        expected = randn_tensor(shape, generator=torch.Generator().manual_seed(3)) * (sigma if scaled else 1.0)
        torch.testing.assert_close(rec.inputs[0], expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_ddim_pipeline_one_line_swap(unet, name):
    """DDIMPipeline passes ``eta`` and ``use_clipped_model_output`` to ``step``: after the one-line swap it runs,
    and gives what the scheduler gives when driven directly from the same start (``init_noise_sigma = 1`` here,
    the accelerated DDPM scheduler excepted, whose start DDIMPipeline does not scale)."""
    pipe = ddpm_pipe(DDIMPipeline, unet, DDIMScheduler())
    pipe.scheduler = ad.samplers.scheduler_for(name, pipe.scheduler.config)
    img = pipe(
        batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="pt", eta=0.0
    ).images
    assert img.shape == (2, 3, 8, 8) and bool(((img >= 0) & (img <= 1)).all())
    gen = torch.Generator().manual_seed(0)
    noise = randn_tensor((2, 3, 8, 8), generator=gen) / pipe.scheduler.init_noise_sigma
    ref = ad.sample_with_scheduler(
        eps_fn(unet), noise, ad.samplers.scheduler_for(name, pipe.scheduler.config), 3, generator=gen
    )
    torch.testing.assert_close(img, (ref / 2 + 0.5).clamp(0, 1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="eta=0.5"):
        pipe(batch_size=1, num_inference_steps=2, eta=0.5)


@pytest.mark.parametrize("cls", [ad.AcceleratedDDIMScheduler, ad.DDPMTypeScheduler], ids=lambda c: c.__name__)
def test_init_noise_pipeline_equals_ddpm_pipeline_when_sigma_is_one(unet, cls):
    outs = []
    for pipeline_cls in (DDPMPipeline, InitNoiseDDPMPipeline):
        pipe = ddpm_pipe(pipeline_cls, unet, cls(clip_sample=True))
        outs.append(
            pipe(
                batch_size=2, generator=torch.Generator().manual_seed(1), num_inference_steps=3, output_type="pt"
            ).images
        )
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------------
# Stable Diffusion with tiny random components
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sd_pipe():
    return tiny_random_stable_diffusion(seed=0)


def run_sd(pipe, seed=0, **kwargs):
    rec = CallRecorder(pipe.unet)
    try:
        kwargs.setdefault("num_inference_steps", 2)
        out = pipe(
            "a red church",
            height=32,
            width=32,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
            **kwargs,
        )
    finally:
        rec.handle.remove()
    return out.images, rec.inputs


@pytest.mark.parametrize("name", NAMES)
def test_stable_diffusion_one_line_swap(sd_pipe, name):
    sd_pipe.scheduler = ad.samplers.scheduler_for(name, sd_pipe.scheduler.config)
    img, inputs = run_sd(sd_pipe)
    assert img.shape == (1, 32, 32, 3) and bool(torch.isfinite(torch.from_numpy(img)).all())
    # classifier-free guidance: one UNet call per timestep on a doubled batch (2 network evaluations each)
    assert len(inputs) == len(sd_pipe.scheduler.timesteps) == 2
    assert all(x.shape[0] == 2 for x in inputs)
    # the pipeline starts from randn * init_noise_sigma (the law of Y_T^+ for the accelerated DDPM scheduler)
    sigma = sd_pipe.scheduler.init_noise_sigma
    z = randn_tensor((1, 4, 16, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(inputs[0][:1], z * sigma, rtol=0, atol=0)
    assert (sigma > 1.1) == (name == "accelerated_sde")
    # The same start passed as latents: the generator is then not consumed by the start, so the stochastic
    # schedulers (which draw from the pipeline's generator) give another sample, the deterministic ones the same.
    same_start, _ = run_sd(sd_pipe, latents=z)
    assert (same_start == img).all() == (name not in STOCHASTIC)


def test_stable_diffusion_custom_timesteps_and_no_guidance(sd_pipe):
    sd_pipe.scheduler = ad.AcceleratedDDIMScheduler.from_config(sd_pipe.scheduler.config)
    _, inputs = run_sd(sd_pipe, num_inference_steps=None, timesteps=[901, 501, 101, 1], guidance_scale=1.0)
    assert sd_pipe.scheduler.timesteps.tolist() == [901, 501, 101, 1]
    assert len(inputs) == 4 and all(x.shape[0] == 1 for x in inputs)  # no guidance: one evaluation per step
