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
``generator`` to ``step``: the schedulers work there unmodified.

Saving and reloading: ``pipe.save_pretrained(folder)`` records ``"_class_name": "InitNoiseDDPMPipeline"`` in
``model_index.json``, and ``DiffusionPipeline.from_pretrained(folder)`` looks that name up in the ``diffusers``
namespace.  Importing this module (which ``import accelerated_diffusion`` does) registers the class there
(:func:`register_with_diffusers`), so after ``import accelerated_diffusion`` both ``DiffusionPipeline.from_pretrained(folder)`` and
``InitNoiseDDPMPipeline.from_pretrained(folder)`` return an :class:`InitNoiseDDPMPipeline` (the schedulers of
this package are found by diffusers through their library name, ``accelerated_diffusion``), without
``trust_remote_code`` or a copy of the code in the folder.

Both draw the start with ``randn_tensor`` from the same ``generator`` as ``DDPMPipeline``, so for a scheduler
with ``init_noise_sigma = 1`` they return exactly what ``DDPMPipeline`` returns.
"""

from __future__ import annotations

import diffusers
import torch
from diffusers import DDPMPipeline
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from .samplers import sample_with_scheduler

__all__ = ["InitNoiseDDPMPipeline", "register_with_diffusers"]


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


def register_with_diffusers(cls=InitNoiseDDPMPipeline) -> None:
    """Make ``cls`` findable by name in the ``diffusers`` namespace, where ``DiffusionPipeline.from_pretrained``
    resolves the ``_class_name`` of a saved pipeline's ``model_index.json``; refuses to shadow another class."""
    try:
        existing = getattr(diffusers, cls.__name__)
    except (AttributeError, ImportError, RuntimeError):
        existing = None
    if existing is not None and existing is not cls:
        raise RuntimeError(f"diffusers already defines {cls.__name__}; not replacing it")
    setattr(diffusers, cls.__name__, cls)


register_with_diffusers()
