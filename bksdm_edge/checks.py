"""User input, checked once before any work starts.

Every command calls these first thing (before loading a model), so a wrong value costs a second,
not a half-hour export. Each check raises ``InputError`` (exit code 2) with a one-line message that
names the option, the value and the fix. The module imports neither torch nor numpy.

The resolution rule is shared by distill, cache-latents, export, eval, bench, profile and the
export shapes: an image side must be a positive multiple of ``VAE factor x 8`` (the VAE divides
the image by its factor; SD U-Nets downsample the latent three times, by 8; so 64 px for SD,
16 px for ``builtin:mini-sd-digits`` with its factor-2 VAE).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Sequence

from .errors import InputError, OutputError

UNET_FACTOR = 8  # SD U-Nets: three 2x downsamplers between the latent and the innermost stage


# ---- numbers -----------------------------------------------------------------------------------------------


def at_least(value, minimum, flag: str, *, why: str = ""):
    """``value`` (if given) must be >= ``minimum``; returns it."""
    if value is not None and not value >= minimum:
        raise InputError(f"{flag} must be >= {minimum}, got {value}" + (f" ({why})" if why else ""))
    return value


def in_range(value, low, high, flag: str, *, low_open: bool = False, high_open: bool = False):
    """``value`` (if given) must lie in the range; ``*_open`` excludes that end. Returns it."""
    if value is None:
        return value
    ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok or (isinstance(value, float) and math.isnan(value)):
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise InputError(f"{flag} must be in {left}{low}, {high}{right}, got {value}")
    return value


def finite(value, flag: str):
    if value is not None and not math.isfinite(value):
        raise InputError(f"{flag} must be a finite number, got {value}")
    return value


def choices(values: Iterable[str], allowed: Sequence[str], flag: str) -> list[str]:
    """Every item of ``values`` must be one of ``allowed``; returns them as a list."""
    values = list(values)
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise InputError(f"{flag}: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(allowed)}")
    if not values:
        raise InputError(f"{flag} is empty; choose from {', '.join(allowed)}")
    return values


# ---- image sizes ---------------------------------------------------------------------------------------------


def size_multiple(vae_scale_factor: int) -> int:
    """Image sides must be multiples of this: the VAE factor times the U-Net's 8."""
    return vae_scale_factor * UNET_FACTOR


def image_size(height: int | None, width: int | None, vae_scale_factor: int, *, flags=("--height", "--width"),
               source: str = "this model") -> None:
    """Height and width (None: the model's default) must be positive multiples of ``size_multiple``."""
    m = size_multiple(vae_scale_factor)
    for value, flag in zip((height, width), flags):
        if value is None:
            continue
        if value <= 0 or value % m:
            lower, upper = max(m, value // m * m), max(m, -(-value // m) * m)
            fix = f"use {lower}" if lower == upper else f"use {lower} or {upper}"
            raise InputError(
                f"{flag} {value} is not a positive multiple of {m} (VAE factor {vae_scale_factor} x U-Net factor "
                f"{UNET_FACTOR} for {source}); {fix}")


def vae_scale_factor_of(source: str) -> int | None:
    """The VAE factor of a model source, read from its config without loading weights.

    ``builtin:NAME`` from its spec, a diffusers folder from ``vae/config.json``, a hub id from the
    Hugging Face cache; None when it cannot be known yet (checked again once the model is loaded).
    """
    if source.startswith("builtin:"):
        from .builtins import BUILTINS

        spec = BUILTINS.get(source[len("builtin:"):])
        return spec.vae_scale_factor if spec else None
    config = Path(source) / "vae" / "config.json"
    if not config.is_file() and not Path(source).exists() and source.count("/") == 1:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "vae/config.json")
            config = Path(cached) if isinstance(cached, str) else config
        except Exception:  # an unusual id or cache layout: decide after loading
            return None
    try:
        channels = json.loads(config.read_text())["block_out_channels"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return 2 ** (len(channels) - 1)


def resolution(source: str, height: int | None, width: int | None = None, *, flags=("--resolution", "--resolution")
               ) -> None:
    """Image sizes requested for ``source``: checked now when its VAE factor is known without loading it."""
    factor = vae_scale_factor_of(source)
    for value, flag in zip((height, width), flags):
        if value is not None and value <= 0:
            raise InputError(f"{flag} must be a positive number of pixels, got {value}")
    if factor is not None:
        image_size(height, width, factor, flags=flags, source=source)


# ---- files and folders ---------------------------------------------------------------------------------------


def _readable(path: Path, flag: str, what: str) -> None:
    if not os.access(path, os.R_OK):
        raise InputError(f"{flag} {path}: permission denied; make the {what} readable or pass another one")


def existing_file(path, flag: str, *, suffixes: Sequence[str] = (), what: str = "file") -> Path | None:
    """``path`` (if given) must be a readable file, with one of ``suffixes`` when given."""
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        raise InputError(f"{flag} {path}: no such {what}; check the path")
    if path.is_dir():
        raise InputError(f"{flag} {path} is a folder; pass a {what}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise InputError(f"{flag} {path}: expected a {' / '.join(suffixes)} {what}")
    _readable(path, flag, what)
    return path


def text_file(path, flag: str, *, what: str = "text file") -> Path | None:
    """``path`` (if given) must be a readable UTF-8 text file with at least one non-empty line."""
    path = existing_file(path, flag, what=what)
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{flag} {path} is not a UTF-8 text file; pass a {what} with one entry per line") from None
    if not text.strip():
        raise InputError(f"{flag} {path} is empty; pass a {what} with one entry per line")
    return path


def existing_dir(path, flag: str, *, what: str = "folder", contains: str | None = None, hint: str = ""
                 ) -> Path | None:
    """``path`` (if given) must be a readable folder, holding ``contains`` when given."""
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        raise InputError(f"{flag} {path}: no such {what}; check the path")
    if not path.is_dir():
        raise InputError(f"{flag} {path} is a file; pass a {what}")
    _readable(path, flag, what)
    if contains and not (path / contains).is_file():
        raise InputError(f"{flag} {path} has no {contains}, so it is not a {what}" + (f"; {hint}" if hint else ""))
    return path


def unet_folder(path, flag: str) -> Path | None:
    """``path`` (if given) must be a diffusers U-Net folder (``config.json``), e.g. a student."""
    return existing_dir(path, flag, what="U-Net folder", contains="config.json",
                        hint="pass a folder written by `bksdm-edge build` or `distill` (e.g. RUN_DIR/unet)")


def vae_source(value, flag: str = "--vae") -> str | None:
    """``value`` (if given) must name a VAE: ``teacher``, ``tiny``, an existing folder, or a hub id (``owner/name``,
    looked up in the Hugging Face cache on loading). A path that does not exist is refused here."""
    if value is None or str(value) in ("teacher", "tiny"):
        return value
    text = str(value)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{flag} {text} is a file; pass a `bksdm-edge distill-vae` run folder or an "
                             "AutoencoderTiny folder")
        return value
    if text.startswith((".", "/", "~")) or text.count("/") != 1 or "\\" in text:
        raise InputError(f"{flag} {text}: no such folder (and not a hub id owner/name); pass a `bksdm-edge "
                         "distill-vae` run folder, an AutoencoderTiny folder, a hub id such as madebyollin/taesd, "
                         "'tiny' or 'teacher'")
    return value


def bundle_folder(path, flag: str = "--bundle") -> Path | None:
    """``path`` (if given) must be a folder with a ``manifest.json`` (its contents are verified on loading)."""
    return existing_dir(path, flag, what="bundle folder", contains="manifest.json",
                        hint="pass a folder written by `bksdm-edge export`")


def _writable_parent(path: Path, flag: str) -> None:
    """The nearest existing ancestor of ``path`` must be a folder we can write (missing folders are created)."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{flag} {path}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path}: cannot write in {parent} (permission denied); choose another path")


def output_file(path, flag: str, *, suffixes: Sequence[str] = (), what: str = "file") -> Path | None:
    """``path`` (if given) can be written: not a folder, the right suffix, its folder writable or creatable."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; pass a {what} path such as {path / ('out' + (suffixes or ('',))[0])}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise OutputError(f"{flag} {path}: the {what} name must end in {' or '.join(suffixes)}")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{flag} {path}: the file exists and is read-only; choose another path")
    _writable_parent(path, flag)
    return path


def output_dir(path, flag: str) -> Path | None:
    """``path`` (if given) can become a folder: not an existing file, its parent writable or creatable.

    Whether an existing folder may be replaced is ``outputs.claim``'s decision.
    """
    if path is None:
        return None
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is a file; pass a folder path")
    _writable_parent(path, flag)
    return path


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
