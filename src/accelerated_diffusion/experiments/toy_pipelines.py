r"""A tiny Stable Diffusion pipeline with random components, built offline, to show the schedulers' mechanics
(classifier-free guidance, custom timesteps) in a real ``StableDiffusionPipeline`` without downloading weights.
Needs ``transformers`` (the ``experiments`` extra)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

__all__ = ["tiny_random_stable_diffusion"]


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
    Needs ``transformers``."""
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
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        text_encoder = CLIPTextModel(text_config).eval()
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            cross_attention_dim=16,
            attention_head_dim=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            **blocks,
        ).eval()
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            **blocks,
        ).eval()
    if scheduler is None:
        scheduler = DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
