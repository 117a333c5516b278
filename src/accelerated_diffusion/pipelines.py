r"""A ``DDPMPipeline`` that honours ``scheduler.init_noise_sigma`` (and ``scale_model_input``).

diffusers' ``DDPMPipeline`` (0.42) draws the start ``x_T ~ N(0, I)`` and never multiplies it by
``scheduler.init_noise_sigma``, nor calls ``scheduler.scale_model_input``.  For every scheduler whose
``init_noise_sigma`` is 1 and whose ``scale_model_input`` is the identity (DDPM, DDIM, and
:class:`~accelerated_diffusion.schedulers.AcceleratedDDIMScheduler`, :class:`~accelerated_diffusion.schedulers.DDIMTypeScheduler`,
:class:`~accelerated_diffusion.schedulers.DDPMTypeScheduler`) that is harmless.  For
:class:`~accelerated_diffusion.schedulers.AcceleratedDDPMScheduler` the start must be ``Y_T^+ ~ N(0, (1 + (1 -
alpha_T)/2) I)`` (``init_noise_sigma`` = 1.19, a variance of 1.41, at 10 leading steps of the DDPM schedule), and
Euler-type schedulers need ``init_noise_sigma`` far above 1 and an input scaling; so use

* :class:`InitNoiseDDPMPipeline` as a drop-in replacement of ``DDPMPipeline``
  (``InitNoiseDDPMPipeline(unet=pipe.unet, scheduler=pipe.scheduler)``), or
* the loop :func:`accelerated_diffusion.sample_with_scheduler` with any ``eps_fn``.

``StableDiffusionPipeline`` (and the other latent pipelines) multiply the start by ``init_noise_sigma`` and pass
``generator`` to ``step``: the schedulers work there unmodified.  :func:`tiny_random_stable_diffusion` builds one
with tiny randomly initialised components (no downloads) for tests and demonstrations.

Both draw the start with ``randn_tensor`` from the same ``generator`` as ``DDPMPipeline``, so for a scheduler
with ``init_noise_sigma = 1`` they return exactly what ``DDPMPipeline`` returns.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import DDPMPipeline
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from .samplers import sample_with_scheduler

__all__ = ["InitNoiseDDPMPipeline", "tiny_random_stable_diffusion"]


class InitNoiseDDPMPipeline(DDPMPipeline):
    """``DDPMPipeline`` whose loop is :func:`accelerated_diffusion.sample_with_scheduler`: the start is
    ``randn * scheduler.init_noise_sigma`` and the model sees ``scheduler.scale_model_input(x, t)``.  Same
    arguments and outputs as ``DDPMPipeline.__call__``; the UNet must predict what the scheduler's
    ``prediction_type`` says."""

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 1000,
        output_type: str | None = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, self.unet.config.in_channels, *size)
        device = self._execution_device
        noise = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)

        def eps_fn(x, t):
            return self.unet(x, t).sample

        image = sample_with_scheduler(
            eps_fn, noise, self.scheduler, num_inference_steps, generator=generator, progress=self._progress_enabled()
        )
        image = (image / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(image)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)

    def _progress_enabled(self) -> bool:
        """Whether ``set_progress_bar_config(disable=True)`` was called (then no bar)."""
        return not getattr(self, "_progress_bar_config", {}).get("disable", False)


def _tiny_clip_tokenizer(folder: Path):
    """A character-level CLIP BPE tokenizer: a vocab.json of single letters (plus their end-of-word forms and the
    two special tokens) and an empty merges.txt, written to ``folder``; prompts are truncated to 16 tokens."""
    from transformers import CLIPTokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = letters + [c + "</w>" for c in letters] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)


def tiny_random_stable_diffusion(seed: int = 0, scheduler=None):
    """A ``StableDiffusionPipeline`` with tiny, randomly initialised (seeded) components and no downloads:
    a character-level CLIP tokenizer, a 1-layer ``CLIPTextModel`` of width 16, a 2-level ``UNet2DConditionModel``
    (16/32 channels, 4 latent channels, cross-attention) and a 2-level ``AutoencoderKL`` (so 32x32 images have 16x16
    latents).  The scheduler defaults to Stable Diffusion's ``DDIMScheduler`` config (scaled_linear 0.00085..0.012,
    ``steps_offset=1``, ``set_alpha_to_one=False``, no clipping).  Outputs are noise: this is for the mechanics.
    Needs ``transformers`` (the ``test`` extra)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    try:
        from transformers import CLIPTextConfig, CLIPTextModel
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("tiny_random_stable_diffusion needs transformers: pip install transformers") from err
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _tiny_clip_tokenizer(Path(tmp))
    blocks = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_config = CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        text_encoder = CLIPTextModel(text_config).eval()
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=4, out_channels=4, cross_attention_dim=16, attention_head_dim=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            **blocks,
        ).eval()
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, **blocks,
        ).eval()
    if scheduler is None:
        scheduler = DDIMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
            set_alpha_to_one=False, steps_offset=1,
        )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
