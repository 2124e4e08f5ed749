"""Tiny random models of the two further Hub layouts, for tests:

- ``make_tiny_text_prior``: the Stable Diffusion layout, ``unet/`` (UNet2DConditionModel),
  ``vae/`` (AutoencoderKL with a scaling_factor), ``text_encoder/`` (a CLIP text model),
  ``tokenizer/`` (a CLIP BPE tokenizer's vocab.json and merges.txt, written here) and
  ``scheduler/`` (a PNDM config, as SD ships);
- ``make_tiny_pixel_prior``: a DDPMPipeline's, ``unet/`` (UNet2DModel), ``scheduler/`` and
  its ``model_index.json``, written by diffusers' own ``save_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDPMPipeline,
    DDPMScheduler,
    PNDMScheduler,
    UNet2DConditionModel,
)
from tiny_prior import tiny_unet

TEXT_LENGTH = 16  # the tokenizer's model_max_length (SD's is 77)
SD_SCALING_FACTOR = 0.18215


def _byte_letters() -> list[str]:
    """The printable stand-in CLIP's byte-level BPE uses for each byte (GPT-2's mapping)."""
    keep = {*range(33, 127), *range(161, 173), *range(174, 256)}
    letters, extra = [], 0
    for byte in range(256):
        letters.append(chr(byte) if byte in keep else chr(256 + extra))
        extra += byte not in keep
    return letters


def write_tokenizer(folder: Path) -> int:
    """A CLIP tokenizer folder: every byte as a word-inner and a word-final token, merges
    that make "cat" and "dog" one token each; returns the vocabulary size."""
    letters = _byte_letters()
    merges = ["c a", "ca t</w>", "d o", "do g</w>"]
    vocab = [*letters, *(c + "</w>" for c in letters), "ca", "cat</w>", "do", "dog</w>"]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": TEXT_LENGTH}))
    return len(vocab)


def make_tiny_text_prior(folder: Path, seed: int = 0) -> Path:
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    torch.manual_seed(seed)
    vocab_size = write_tokenizer(folder / "tokenizer")
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=TEXT_LENGTH,
            projection_dim=16,
            bos_token_id=vocab_size - 2,  # the tokenizer's last two tokens
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 8, 8),  # factor 4 (SD's is 8): 32x32 images, 8x8 latents
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=SD_SCALING_FACTOR,
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    text.save_pretrained(folder / "text_encoder")
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    scheduler.save_pretrained(folder / "scheduler")
    return folder


def make_tiny_pixel_prior(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    unet = tiny_unet(3, sample_size=32)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(folder)
    return Path(folder)


def cache_as_hub_repo(cache: Path, repo: str, commit: str, make) -> Path:
    """``make(folder)`` into ``cache`` as huggingface_hub lays out a download of ``main``."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot = make(storage / "snapshots" / commit)
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    return snapshot
