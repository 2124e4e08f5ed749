"""Text-conditioned latent priors (the Stable Diffusion layout): a ``UNet2DConditionModel``
that reads a CLIP text encoder's embedding of a prompt, with classifier-free guidance.

The solvers call ``eps(z, t)`` and know nothing of prompts: the prior is told its prompt,
negative prompt and guidance scale once (``set_prompt``), embeds them then, and each
``eps`` runs the UNet on the stored embeddings. The text encoder and tokenizer come from
``transformers``, an optional extra (``resample-cli[text]``), imported only for such a model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler

from ..messages import first_line
from .diffusers_prior import Autoencoder, DiffusersPrior
from .errors import PriorError
from .layout import TEXT_WEIGHTS

TEXT_EXTRA = "resample-cli[text]"


@dataclass(frozen=True)
class Prompt:
    """What a text-conditioned prior is asked for. ``guidance_scale`` w mixes the noise
    predictions as eps = eps(negative) + w (eps(prompt) - eps(negative)); w = 1 is the
    prompt's prediction alone, one UNet pass, and leaves the negative prompt unused."""

    prompt: str = ""
    negative_prompt: str = ""
    guidance_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.guidance_scale < 1:
            raise ValueError(
                f"--guidance-scale must be at least 1 (1: no guidance), got {self.guidance_scale:g}"
            )
        if self.negative_prompt and self.guidance_scale == 1:
            raise ValueError("--negative-prompt takes effect only with --guidance-scale above 1")

    @property
    def unconditional(self) -> bool:
        """Whether this asks nothing of a prior (what an unconditional one can run)."""
        return self == Prompt()


def apply_prompt(prior: Any, prompt: Prompt) -> None:
    """Condition ``prior`` on ``prompt``; a ``ValueError`` when it is not text-conditioned
    and the prompt asks something of it."""
    if isinstance(prior, TextConditionedPrior):
        prior.set_prompt(prompt)
    elif not prompt.unconditional:
        raise ValueError(
            f"model {prior.info.name!r} is not text-conditioned: --prompt, --negative-prompt and "
            "--guidance-scale need a model with a text encoder (e.g. --model sd-1.5)"
        )


class TextConditionedPrior(DiffusersPrior):
    """``DiffusersPrior`` whose UNet is a ``UNet2DConditionModel`` fed a prompt's CLIP
    embedding (the last hidden state, as diffusers' Stable Diffusion pipeline takes it).
    Until ``set_prompt`` is called it is conditioned on the empty prompt."""

    def __init__(
        self,
        unet: torch.nn.Module,
        autoencoder: Autoencoder,
        scheduler: DDIMScheduler,
        text_encoder: torch.nn.Module,
        tokenizer: Any,
        **kwargs: Any,
    ):
        super().__init__(unet, autoencoder, scheduler, **kwargs)
        self.text_encoder = text_encoder.eval().requires_grad_(False).to(self.device, self.dtype)
        self.tokenizer = tokenizer
        self.set_prompt(Prompt())

    @property
    def unet_passes(self) -> int:
        return 1 if self.prompt.guidance_scale == 1 else 2

    def conditioning(self) -> dict:
        return {"kind": "text", **asdict(self.prompt)}

    def set_prompt(self, prompt: Prompt) -> None:
        """Embed the prompt (and, with guidance, the negative prompt) once, for every later ``eps``."""
        self.prompt = prompt
        self._prompt_embedding = self.embed(prompt.prompt)
        self._negative_embedding = None if prompt.guidance_scale == 1 else self.embed(prompt.negative_prompt)

    @torch.no_grad()
    def embed(self, text: str) -> torch.Tensor:
        """The text encoder's last hidden state for ``text``, padded to the tokenizer's length (1, L, D)."""
        length = self.tokenizer.model_max_length
        tokens = len(self.tokenizer(text).input_ids)  # with the start and end tokens
        if tokens > length:  # refused: diffusers' pipeline cuts it with a warning a batch run would bury
            raise ValueError(
                f"the prompt {text!r} is {tokens - 2} tokens; the text encoder of model "
                f"{self.info.name!r} takes at most {length - 2}"
            )
        ids = self.tokenizer(text, padding="max_length", max_length=length, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0]

    def unet_output(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = z.shape[0]
        if self._negative_embedding is None:
            return self.unet(z, t, encoder_hidden_states=self._prompt_embedding.expand(n, -1, -1)).sample
        # Both predictions in one batched pass: negative first, then the prompt's.
        embeddings = torch.cat(
            [self._negative_embedding.expand(n, -1, -1), self._prompt_embedding.expand(n, -1, -1)]
        )
        negative, positive = self.unet(
            torch.cat([z, z]), torch.cat([t, t]), encoder_hidden_states=embeddings
        ).sample.chunk(2)
        return negative + self.prompt.guidance_scale * (positive - negative)


def load_text_parts(text_encoder: Path, tokenizer: Path, name: str) -> tuple[torch.nn.Module, Any]:
    """The CLIP text encoder and tokenizer of a text-conditioned model, through
    ``transformers``; a one-line ``PriorError`` naming the extra when it is not installed."""
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError:
        raise PriorError(
            f"model {name!r} is text-conditioned (text_encoder/, tokenizer/) and needs the transformers "
            f"package: pip install '{TEXT_EXTRA}'"
        ) from None
    safetensors = (text_encoder / TEXT_WEIGHTS[0]).is_file()
    try:
        with _quiet_transformers():
            encoder, info = CLIPTextModel.from_pretrained(
                str(text_encoder),
                local_files_only=True,
                use_safetensors=safetensors,
                output_loading_info=True,
            )
            tokens = CLIPTokenizer.from_pretrained(str(tokenizer), local_files_only=True)
    except (OSError, ValueError, TypeError, RuntimeError) as err:
        raise PriorError(
            f"model {name!r}: cannot load its text encoder or tokenizer from {text_encoder.parent} "
            f"({type(err).__name__}: {first_line(err, sentence=True)})"
        ) from err
    # Unexpected keys are allowed: older checkpoints carry buffers (position_ids) that
    # transformers now builds itself.
    missing = sorted(info["missing_keys"])
    if missing:
        raise PriorError(
            f"model {name!r}: {text_encoder / TEXT_WEIGHTS[0 if safetensors else 1]} lacks {len(missing)} "
            f"parameters of text_encoder/config.json (e.g. {', '.join(missing[:3])})"
        )
    return encoder, tokens


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Keep transformers' loading progress bars and notes off the user's terminal; real
    problems become PriorErrors."""
    from transformers.utils import logging

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()
