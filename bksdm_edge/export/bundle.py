"""Export bundles: atomic writing, the manifest (sha256 + size of every file), verification.

Layout and manifest schema: docs/bundle_format.md. numpy-free and torch-free, so
``verify_bundle`` runs wherever a bundle is read.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from ..errors import BksdmError, OutputError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VALIDATION = "validation.json"
# What a reader needs besides the file list (docs/bundle_format.md).
REQUIRED_KEYS = ("format", "precision", "image", "components", "scheduler", "tokenizer")
EXPORT_LOG = "export_log.json"  # stages of the export: wall/CPU seconds, peak RSS (export/stages.py)


class BundleError(BksdmError):
    """A bundle that is missing, incomplete or modified; the message names the file."""


def component_entry(converted, root: Path) -> dict[str, Any]:
    """The manifest entry of one exported component (file, precision, inputs, outputs, format facts)."""
    return {
        "file": converted.path.relative_to(root).as_posix(),
        "precision": converted.precision,
        "inputs": [t.to_json() for t in converted.inputs],
        "outputs": [t.to_json() for t in converted.outputs],
        "extra": converted.extra,
    }


def scheduler_entry(scheduler) -> dict[str, Any]:
    """A diffusers scheduler's config as the manifest records it (``_class_name`` + public fields)."""
    return {"_class_name": type(scheduler).__name__,
            **{k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}}


def write_model_index(root: Path, info: dict[str, Any], pipeline_class: str,
                      component_class: Callable[[str], list]) -> Path:
    """``model_index.json`` of a diffusers-style pipeline folder (optimum's ONNX / optimum-intel's OpenVINO layout).

    Args:
        root: bundle folder. info: the manifest (scheduler, components, versions).
        pipeline_class: e.g. ``ORTStableDiffusionPipeline``. component_class: component -> [library, class].
    """
    index = {
        "_class_name": pipeline_class,
        "_diffusers_version": info.get("versions", {}).get("diffusers", ""),
        "scheduler": ["diffusers", info["scheduler"]["_class_name"]],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        **{component: component_class(component) for component in info["components"]},
    }
    path = root / "model_index.json"
    path.write_text(json.dumps(index, indent=2) + "\n")
    return path


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def list_files(root: Path) -> list[str]:
    """Every file under ``root`` except the manifest, as sorted POSIX paths relative to ``root``."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p != root / MANIFEST)


def write_manifest(root: Path, manifest: dict[str, Any], *, complete: bool) -> Path:
    """Write ``manifest.json`` with the hash and size of every other file in ``root``."""
    manifest = dict(manifest)
    manifest["format_version"] = FORMAT_VERSION
    manifest["complete"] = complete
    manifest.setdefault("created", datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    manifest["files"] = {
        rel: {"sha256": sha256_file(root / rel), "size": (root / rel).stat().st_size} for rel in list_files(root)
    }
    path = root / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


FAILED_NOTE = "EXPORT_FAILED.txt"


class BundleWriter:
    """Write a bundle into a temporary sibling folder; ``commit`` renames it into place.

    Use as a context manager. If the block raises (or never commits), the folder is
    moved to ``OUT.failed`` (replacing an older one of ours) for inspection, with an
    ``EXPORT_FAILED.txt`` note; its manifest, if any, says ``"complete": false``, so it can
    never be mistaken for a bundle, and a previous bundle at ``OUT`` is left intact.

    ``OUT`` and ``OUT.failed`` are checked when the writer is created (before any slow work):
    ``overwrite`` replaces only a bundle this tool wrote (or the remains of a failed export);
    an ordinary folder is refused whatever the flags (``outputs.claim``).
    """

    def __init__(self, out: str | Path, *, overwrite: bool = False):
        from .. import checks
        from ..outputs import BUNDLE, FAILED_BUNDLE, FAILED_VALIDATION, claim, is_empty_dir, kind_of

        self.out = Path(out).absolute()
        checks.output_dir(self.out, "--out")
        ours = (BUNDLE, FAILED_BUNDLE, FAILED_VALIDATION)
        self.replaces = claim(self.out, ours, replace=overwrite, flag="--out", option="--overwrite")
        # OUT.failed is replaced automatically on a failure, so it too must be ours (or absent) before we start.
        failed = self.failed_path_for(self.out)
        if failed.exists() and not (failed.is_dir() and (is_empty_dir(failed) or kind_of(failed, ours))):
            raise OutputError(f"--out {self.out}: {failed.name} exists beside it and was not written by bksdm-edge; "
                              "a failed export keeps its remains under that name, so move that folder away first")
        self.overwrite = overwrite
        self.root: Path | None = None
        self.committed = False

    @staticmethod
    def failed_path_for(out: Path) -> Path:
        return out.with_name(out.name + ".failed")

    def __enter__(self) -> "BundleWriter":
        from ..outputs import temp_sibling

        self.root = temp_sibling(self.out)
        return self

    def commit(self, manifest: dict[str, Any]) -> Path:
        """Write the complete manifest and move the bundle to its final path (replacing a bundle of ours)."""
        from ..console import notice
        from ..outputs import replace_dir

        write_manifest(self.root, manifest, complete=True)
        if replace_dir(self.root, self.out) and self.replaces:
            notice(f"replaced {self.replaces}")
        self.committed = True
        return self.out

    def __exit__(self, exc_type, exc, tb) -> None:
        from ..outputs import replace_dir

        if self.committed or self.root is None or not self.root.exists():
            return
        manifest = self.root / MANIFEST
        if manifest.exists():
            data = json.loads(manifest.read_text())
            data["complete"] = False
            manifest.write_text(json.dumps(data, indent=2) + "\n")
        reason = f"{exc_type.__name__}: {exc}" if exc_type else "the export did not finish"
        (self.root / FAILED_NOTE).write_text(
            f"This folder holds what a failed bksdm-edge export of {self.out.name} wrote; it is not a bundle.\n"
            f"Reason: {reason}\nSee {VALIDATION} (if present) for the failed checks. Safe to delete; the next "
            "failed export to the same --out replaces it.\n")
        failed = self.failed_path_for(self.out)
        replace_dir(self.root, failed)
        self.failed_path = failed


def read_manifest(path: str | Path) -> dict[str, Any]:
    root = Path(path)
    manifest = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"{root} is not a bundle folder")
    if not manifest.exists():
        raise BundleError(f"{root} has no {MANIFEST}; it is not a bundle (or its export did not finish)")
    try:
        return json.loads(manifest.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{manifest} is not valid JSON: {err}") from err


def verify_bundle(path: str | Path) -> dict[str, Any]:
    """Check a bundle before loading it: complete, every listed file present with its size and
    sha256, and no unlisted files. Returns the manifest; raises ``BundleError`` naming the bad file."""
    root = Path(path)
    manifest = read_manifest(root)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{root}: unsupported bundle format_version {manifest.get('format_version')!r} "
                          f"(this toolkit reads {FORMAT_VERSION})")
    if manifest.get("complete") is not True:
        raise BundleError(f"{root}: the manifest does not say the bundle is complete (its export failed or was "
                          "interrupted); export it again")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{root}: {MANIFEST} lacks {', '.join(missing)}: it was edited or written by another tool; "
                          "export the bundle again")
    files = manifest.get("files") or {}
    for rel, entry in files.items():
        f = root / rel
        if not f.is_file():
            raise BundleError(f"{root}: file {rel} listed in the manifest is missing")
        size = f.stat().st_size
        if size != entry["size"]:
            raise BundleError(f"{root}: file {rel} has {size} bytes, the manifest says {entry['size']}: "
                              "it was modified or truncated")
        if sha256_file(f) != entry["sha256"]:
            raise BundleError(f"{root}: file {rel} does not match its sha256 in the manifest: it was modified")
    extra = sorted(set(list_files(root)) - set(files))
    if extra:
        raise BundleError(f"{root}: files not listed in the manifest: {', '.join(extra)}")
    for name, comp in manifest.get("components", {}).items():
        # A component is one file (model.onnx) or a package folder (Core ML .mlpackage) of listed files.
        if comp["file"] not in files and not any(f.startswith(comp["file"].rstrip("/") + "/") for f in files):
            raise BundleError(f"{root}: component {name} file {comp['file']} is not listed in the manifest")
    return manifest
