"""Finding a prior by registry name, folder or Hub repository id; fetching it into the
Hugging Face cache; building a ``DiffusersPrior`` from it with diffusers' own loader.

A Hub model already in the cache is used without contacting the Hub (so runs are fast and
work offline); ``fetch_prior`` is what refreshes a branch revision such as ``main``.

Weights load through diffusers' ``from_pretrained`` (see ``_network``): safetensors when the
folder has them, else ``.bin`` through ``torch.load(weights_only=True)`` (never unrestricted
unpickling), with the attention parameter names of early diffusers releases (``query``,
``key``, ``value``, ``proj_attn``) renamed on load.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel, UNet2DModel
from diffusers.utils import logging as diffusers_logging
from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.utils import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import logging as hub_logging

from ..messages import first_line
from .base import PriorInfo
from .diffusers_prior import AUTOENCODER_CLASSES, DiffusersPrior, default_latent_scale
from .errors import PriorError
from .layout import (
    AUTOENCODER_FOLDERS,
    BIN,
    CONFIG,
    MODEL_INDEX,
    SAFETENSORS,
    SCHEDULER_CONFIG,
    TEXT_UNET,
    TEXT_WEIGHTS,
    TOKENIZER_FILES,
    find_layout,
    weights_file,
)
from .registry import RegistryEntry, load_registry
from .text import TextConditionedPrior, load_text_parts

__all__ = ["PriorError", "fetch_prior", "load_prior", "prior_cache_path"]

# The noise-prediction networks a model's unet/config.json may name.
UNET_CLASSES: dict[str, type] = {"UNet2DModel": UNet2DModel, TEXT_UNET: UNet2DConditionModel}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class _Source:
    """Where one model comes from: a Hub repository or a folder, and its subfolder names."""

    name: str  # as the user gave it: a registry name, a folder or a repo id
    command: str  # the shell command that fetches it ahead of time
    repo: str | None = None
    revision: str | None = None
    folder: Path | None = None
    unet: str = "unet"
    autoencoder: str | None = None
    scheduler: str = "scheduler"
    latent_scale: float | None = None

    def layout_kwargs(self) -> dict[str, Any]:
        return {"unet": self.unet, "autoencoder": self.autoencoder, "scheduler": self.scheduler}


def load_prior(
    spec: str,
    revision: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    registry: Path | str | None = None,
) -> DiffusersPrior:
    """Load a prior from a registry name, a local folder in diffusers layout, or a Hub repo id
    ("owner/name", fetched into the Hugging Face cache unless already there or offline).
    ``revision`` overrides the registry's pinned revision; ``registry`` another registry file."""
    source = _resolve(spec, revision, registry)
    folder = source.folder if source.folder is not None else _hub_folder(source, refresh=False)
    return _build(folder, source, torch.device(device), dtype)


def fetch_prior(spec: str, revision: str | None = None, *, registry: Path | str | None = None) -> Path:
    """Download a Hub model into the cache ahead of time (a local one is only checked) and
    return its folder."""
    source = _resolve(spec, revision, registry)
    folder = source.folder if source.folder is not None else _hub_folder(source, refresh=True)
    find_layout(folder, source.name, **source.layout_kwargs())
    return folder


def prior_cache_path(
    spec: str, revision: str | None = None, *, registry: Path | str | None = None
) -> Path | None:
    """The folder a model would load from without the network, or None if it is not all there."""
    source = _resolve(spec, revision, registry)
    if source.folder is None:
        return _complete_snapshot(source)
    try:
        find_layout(source.folder, source.name, **source.layout_kwargs())
    except PriorError:
        return None
    return source.folder


def _resolve(spec: str, revision: str | None, registry: Path | str | None) -> _Source:
    command = f"resample models download {spec}" + (f" --revision {revision}" if revision else "")
    folder = Path(spec).expanduser()
    if folder.is_dir() and _names_a_path(spec):  # a folder never needs the registry
        return _folder_source(spec, command, folder, revision)
    try:
        entries = load_registry(registry)
    except PriorError:
        if folder.is_dir() or _REPO_ID.match(spec):
            entries = {}
        else:
            raise
    if spec in entries:
        return _entry_source(entries[spec], command, revision)
    if folder.is_dir():
        return _folder_source(spec, command, folder, revision)
    if _REPO_ID.match(spec):
        return _Source(name=spec, command=command, repo=spec, revision=revision)
    known = ", ".join(sorted(entries)) or "none"
    raise PriorError(
        f"unknown model {spec!r}: not a registry name (known: {known}), an existing folder, "
        "or a Hugging Face Hub repo id like owner/name"
    )


def _names_a_path(spec: str) -> bool:
    """Written as a path (a separator, ``.`` or ``~`` first) rather than a bare registry name."""
    return "/" in spec or "\\" in spec or spec.startswith((".", "~"))


def _folder_source(spec: str, command: str, folder: Path, revision: str | None) -> _Source:
    if revision is not None:
        raise PriorError(f"model {spec!r} is a local folder; a revision applies only to Hub models")
    return _Source(name=spec, command=command, folder=folder.resolve())


def _entry_source(entry: RegistryEntry, command: str, revision: str | None) -> _Source:
    if entry.kind == "bundled" and revision is not None:
        raise PriorError(f"model {entry.name!r} is bundled with resample; it has no revisions")
    return _Source(
        name=entry.name,
        command=command,
        repo=entry.repo,
        revision=revision or entry.revision,
        folder=entry.path,
        unet=entry.unet,
        autoencoder=entry.autoencoder,
        scheduler=entry.scheduler,
        latent_scale=entry.latent_scale,
    )


def _network_folders(source: _Source) -> list[str]:
    return [source.unet, *([source.autoencoder] if source.autoencoder else AUTOENCODER_FOLDERS)]


def _config_patterns(source: _Source) -> list[str]:
    """Every small file a model may need: configs (the text encoder's too, where there is
    one), the pipeline's part list, the tokenizer's files."""
    tokenizer = [f"tokenizer/{name}" for files in TOKENIZER_FILES for name in files]
    return [f"{sub}/{CONFIG}" for sub in [*_network_folders(source), "text_encoder"]] + [
        f"{source.scheduler}/{SCHEDULER_CONFIG}",
        MODEL_INDEX,
        "tokenizer/tokenizer_config.json",
        "tokenizer/special_tokens_map.json",
        *tokenizer,
    ]


def _cached_snapshot(source: _Source) -> Path | None:
    """The cached snapshot folder of ``source``'s revision (configs at least), or None."""
    try:
        with _quiet_hub():
            folder = snapshot_download(
                source.repo,
                revision=source.revision,
                cache_dir=constants.HF_HUB_CACHE,
                allow_patterns=_config_patterns(source),
                local_files_only=True,
            )
        return Path(folder)
    except LocalEntryNotFoundError:
        return None


def _complete_snapshot(source: _Source) -> Path | None:
    folder = _cached_snapshot(source)
    if folder is None:
        return None
    try:
        find_layout(folder, source.name, **source.layout_kwargs())
    except PriorError:
        return None
    return folder


def _hub_folder(source: _Source, *, refresh: bool) -> Path:
    if not refresh or constants.HF_HUB_OFFLINE:
        cached = _cached_snapshot(source)
        if cached is not None:
            try:
                find_layout(cached, source.name, **source.layout_kwargs())
                return cached
            except PriorError as err:
                if constants.HF_HUB_OFFLINE:  # name the missing file, and how to fetch it
                    raise PriorError(
                        f"{err}; HF_HUB_OFFLINE is set: fetch it with {source.command}"
                    ) from None
        if constants.HF_HUB_OFFLINE:
            raise _not_cached(source, "HF_HUB_OFFLINE is set")
    try:
        return _download(source)
    except RevisionNotFoundError as err:
        raise PriorError(
            f"model {source.name!r}: revision {source.revision!r} not found in {source.repo}"
        ) from err
    except RepositoryNotFoundError as err:
        raise PriorError(
            f"model {source.name!r}: no Hub repository {source.repo} (or it is private or gated: log in first)"
        ) from err
    except LocalEntryNotFoundError as err:  # the Hub was unreachable and the cache lacks the files
        raise _not_cached(source, "the Hub cannot be reached") from err
    except OSError as err:  # connection errors not already turned into the above
        raise _not_cached(source, f"the Hub cannot be reached ({type(err).__name__})") from err


def _download(source: _Source) -> Path:
    """Configs and safetensors weights; ``.bin`` weights only for networks that lack safetensors."""
    if source.revision and _COMMIT.fullmatch(source.revision):
        _check_reachable(source)
    networks = _network_folders(source)
    with _quiet_hub():
        folder = Path(
            snapshot_download(
                source.repo,
                revision=source.revision,
                cache_dir=constants.HF_HUB_CACHE,
                allow_patterns=_config_patterns(source)
                + [f"{sub}/{SAFETENSORS}" for sub in networks]
                + [f"text_encoder/{TEXT_WEIGHTS[0]}"],
            )
        )
        bins = [
            f"{sub}/{BIN}"
            for sub in networks
            if (folder / sub / CONFIG).is_file() and weights_file(folder / sub) is None
        ]
        text_encoder = folder / "text_encoder"
        if (text_encoder / CONFIG).is_file() and weights_file(text_encoder, TEXT_WEIGHTS) is None:
            bins.append(f"text_encoder/{TEXT_WEIGHTS[1]}")
        if bins:  # pinned to the commit just fetched, should the branch move meanwhile
            snapshot_download(
                source.repo, revision=folder.name, cache_dir=constants.HF_HUB_CACHE, allow_patterns=bins
            )
    return folder


def _check_reachable(source: _Source) -> None:
    """Ask the Hub about the repository once, without retries: a Hub that does not answer
    is one PriorError at once. For a commit hash (the registry's pins) snapshot_download
    skips its own such question and lists the files at once, a request it retries five
    times over about 25 s when the Hub cannot be reached. A missing repository or revision
    raises its own error; any other answer leaves the download to decide."""
    try:
        with _quiet_hub():
            HfApi().repo_info(source.repo, revision=source.revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise
    except HfHubHTTPError:
        return  # the Hub answered (a server error, a rate limit): the download's own handling applies
    except Exception as err:  # no answer at all (name resolution, refused, timed out): library-specific types
        raise _not_cached(source, "the Hub cannot be reached") from err


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """Keep huggingface_hub's log lines ("Retrying in 8s [Retry 4/5]") and warnings off the
    user's terminal, under --quiet too: what goes wrong becomes one PriorError line."""
    level = hub_logging.get_verbosity()
    hub_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hub_logging.set_verbosity(level)


def _not_cached(source: _Source, reason: str) -> PriorError:
    return PriorError(
        f"model {source.name!r} ({source.repo} at revision {source.revision or 'main'}) is not in the "
        f"Hugging Face cache {constants.HF_HUB_CACHE} and {reason}; fetch it ahead of time with: {source.command}"
    )


def _build(folder: Path, source: _Source, device: torch.device, dtype: torch.dtype) -> DiffusersPrior:
    layout = find_layout(folder, source.name, **source.layout_kwargs())
    # The raw files, not the built models' configs: diffusers fills in defaults (a missing
    # scaling_factor becomes Stable Diffusion's) that would hide what the file says.
    unet_config = _read_json(layout.unet / CONFIG, source.name)
    unet_class = unet_config.get("_class_name", "UNet2DModel")
    if unet_class not in UNET_CLASSES:
        raise PriorError(
            f"model {source.name!r}: {layout.unet.name}/ holds a {unet_class}; "
            f"expected a {' or a '.join(UNET_CLASSES)}"
        )
    if unet_class == TEXT_UNET and layout.autoencoder is None:
        raise PriorError(f"model {source.name!r}: a text-conditioned UNet needs an autoencoder (vae/)")
    # The text parts first: without transformers the error comes before the large networks load.
    text_parts = None
    if layout.text_encoder is not None:
        text_parts = load_text_parts(layout.text_encoder, layout.tokenizer, source.name)
    ae_config, autoencoder = {}, None
    if layout.autoencoder is not None:
        ae_config = _read_json(layout.autoencoder / CONFIG, source.name)
        default_class = "VQModel" if layout.autoencoder.name == "vqvae" else "AutoencoderKL"
        ae_class = AUTOENCODER_CLASSES.get(ae_config.get("_class_name", default_class))
        if ae_class is None:
            raise PriorError(
                f"model {source.name!r}: {layout.autoencoder.name}/ holds a {ae_config['_class_name']}; "
                "expected a VQModel or AutoencoderKL"
            )
        autoencoder = _network(ae_class, layout.autoencoder, source.name)
    unet = _network(UNET_CLASSES[unet_class], layout.unet, source.name)
    scheduler = _scheduler(layout.scheduler / SCHEDULER_CONFIG, source.name)
    latent_scale = source.latent_scale if source.latent_scale is not None else default_latent_scale(ae_config)
    info = PriorInfo(
        name=source.name,
        repo=source.repo,
        revision=folder.name if source.repo else None,  # the snapshot folder is named by its commit
        path=str(folder),
    )
    kwargs = {"latent_scale": latent_scale, "info": info, "device": device, "dtype": dtype}
    if text_parts is not None:
        return TextConditionedPrior(unet, autoencoder, scheduler, *text_parts, **kwargs)
    return DiffusersPrior(unet, autoencoder, scheduler, **kwargs)


@contextlib.contextmanager
def _quiet_diffusers() -> Iterator[None]:
    """Keep diffusers' loading chatter (accelerate advice, ignored config keys, the
    "unsafe serialization" note it prints even though .bin files load with
    weights_only=True) off the user's terminal; real problems become PriorErrors."""
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def _network(cls: type, folder: Path, name: str) -> Any:
    """One network through diffusers' ``from_pretrained``, from the weight file the layout
    check found; every parameter must be in the file with the config's shape."""
    weights = weights_file(folder)
    try:
        with _quiet_diffusers():
            model, info = cls.from_pretrained(
                str(folder),  # recorded as the config's _name_or_path, which must stay JSON
                local_files_only=True,
                use_safetensors=weights.name == SAFETENSORS,
                low_cpu_mem_usage=False,  # needed to report mismatched shapes instead of failing on them
                ignore_mismatched_sizes=True,
                output_loading_info=True,
            )
    except (TypeError, ValueError) as err:
        raise PriorError(
            f"model {name!r}: {folder / CONFIG} is not a valid {cls.__name__} config ({first_line(err, sentence=True)})"
        ) from err
    except (OSError, RuntimeError) as err:
        cause = err.__cause__ or err
        raise PriorError(
            f"model {name!r}: weight file {weights} is corrupt, truncated or not a plain tensor file "
            f"({type(cause).__name__}: {first_line(cause, sentence=True)})"
        ) from err
    problems = []
    for kind in ("missing", "unexpected"):
        keys = sorted(info[f"{kind}_keys"])
        if keys:
            problems.append(f"{len(keys)} {kind} (e.g. {', '.join(keys[:3])})")
    for key, in_file, by_config in info["mismatched_keys"][:1]:
        problems.append(f"{key} is {tuple(in_file)} in the file but {tuple(by_config)} by the config")
    if problems:
        raise PriorError(
            f"model {name!r}: weights in {weights} do not match {folder.name}/{CONFIG}: {'; '.join(problems)}"
        )
    return model


def _scheduler(path: Path, name: str) -> DDIMScheduler:
    """DDIM over the model's training noise schedule, whichever scheduler the file names.
    Keys DDIM does not take (old ones such as ``timestep_values``, or another scheduler's)
    are left out rather than warned about on every run: only the schedule matters here."""
    config = _read_json(path, name)
    accepted = inspect.signature(DDIMScheduler.__init__).parameters
    try:
        return DDIMScheduler.from_config({k: v for k, v in config.items() if k in accepted})
    except (TypeError, ValueError, NotImplementedError) as err:
        raise PriorError(f"model {name!r}: {path} is not a usable scheduler config ({err})") from err


def _read_json(path: Path, name: str) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PriorError(f"model {name!r}: cannot read {path} as JSON ({err})") from err
    if not isinstance(config, dict):
        raise PriorError(f"model {name!r}: {path} does not hold a JSON object")
    return config
