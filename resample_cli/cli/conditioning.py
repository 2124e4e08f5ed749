"""What the restoring commands and ``bench`` do to a prior once it is loaded: condition it
on --prompt, --negative-prompt and --guidance-scale, and switch on
--gradient-checkpointing. A work module: it imports the priors (and torch)."""

from __future__ import annotations

import typer

from ..priors import LatentPrior, PriorError
from ..priors.text import Prompt, apply_prompt
from ..solvers import solver_entry


def chosen_prompt(prompt: str, negative_prompt: str, guidance_scale: float) -> Prompt:
    """The prompt options as a ``Prompt``; a combination that would do nothing (a negative
    prompt without guidance) is a usage error (exit 2), found before any model loads."""
    try:
        return Prompt(prompt, negative_prompt, guidance_scale)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--negative-prompt") from None


def ready_prior(
    prior: LatentPrior, prompt: Prompt, gradient_checkpointing: bool, solver: str | None = None
) -> None:
    """Embed ``prompt`` in a text-conditioned ``prior`` (once, for the whole run) and switch
    on gradient checkpointing if asked. A prompt the prior cannot take (it is unconditional,
    or the prompt is too long), or a ``solver`` that cannot run on it (PSLD on a pixel-space
    prior), is a ``PriorError``: every input would fail alike."""
    why = None if solver is None else solver_entry(solver).refuses(True, prior.space)
    if why is not None:
        raise PriorError(f"model {prior.info.name!r} is pixel-space: {why}")
    try:
        apply_prompt(prior, prompt)
    except ValueError as err:
        raise PriorError(str(err)) from None
    if gradient_checkpointing:
        prior.enable_gradient_checkpointing()
