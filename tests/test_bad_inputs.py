"""Bad input, tried as a user would: every command run as a subprocess with a wrong argument.

Each case asserts the exit code (2: bad input; argparse's own usage errors are 2 as well), one
``error: ...`` line that names the thing and the fix, no traceback, and that no file of the user's
changed. The cases are data (``CASES``); the light ones run concurrently once per session (each is a
short process that stops before loading any model), the few that must load a toy model run on their
own. Permission cases run as an unprivileged user when the tests run as root (root may write anywhere).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOBODY = 65534


# ---- running the CLI ------------------------------------------------------------------------------------------


def _env(home: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONWARNINGS", None)
    if home is not None:
        env["HOME"] = str(home)
    return env


def cli(*args, script: str | None = None, unprivileged: bool = False, home: Path | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``bksdm-edge ARGS`` (or ``python SCRIPT ARGS``) from the repository root, as a user would."""
    program = [str(ROOT / script)] if script else ["-m", "bksdm_edge"]
    prefix = []
    if unprivileged and os.geteuid() == 0:
        # Root passes every permission check: run as nobody (no capabilities) to see an ordinary user's view.
        prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return subprocess.run([*prefix, sys.executable, *program, *map(str, args)], cwd=ROOT, env=_env(home),
                          capture_output=True, text=True, timeout=timeout)


def error_line(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """The one ``error:`` line of a refused command (asserting there is nothing else and no traceback)."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


def usage_error_line(proc: subprocess.CompletedProcess) -> str:
    """argparse's own refusal (wrong type, unknown choice): usage, then one ``PROG: error: ...`` line."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    last = proc.stderr.strip().splitlines()[-1]
    assert ": error: " in last, proc.stderr
    return last


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (content) and folder under ``folder``, to prove nothing of the user's changed."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


# ---- one workspace of inputs, built once ------------------------------------------------------------------------


@dataclass
class Workspace:
    root: Path  # world-readable, so an unprivileged user can read what the cases name
    bundle: Path
    student: Path
    mine: Path  # an ordinary folder of the user's, with a sentinel file
    before: dict = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.root / name


@pytest.fixture(scope="session")
def ws(tiny_model) -> Workspace:
    from _export_helpers import tiny_bundle

    from bksdm_edge.student import build_student, save_student

    root = Path(tempfile.mkdtemp(prefix="bksdm-bad-inputs-"))
    root.chmod(0o755)
    # 1. A tiny bundle and a tiny BK-SDM-Small student (the same toy model the export tests use).
    bundle = root / "bundle"
    shutil.copytree(tiny_bundle("fp32"), bundle)
    student, report = build_student(tiny_model.unet, "bk-small")
    save_student(student, root / "student", teacher="builtin:tiny-sd", report=report)
    # 2. Broken copies: a truncated weight file, a folder without config.json, a tampered bundle.
    shutil.copytree(root / "student", root / "student-truncated")
    weights = root / "student-truncated" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    tiny_model.to_pipeline().save_pretrained(root / "pipeline-truncated")
    weights = next((root / "pipeline-truncated" / "vae").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    (root / "not-a-unet").mkdir()
    (root / "not-a-unet" / "notes.txt").write_text("hello")
    shutil.copytree(bundle, root / "bundle-tampered")
    onnx = next((root / "bundle-tampered").rglob("*.onnx"))
    onnx.write_bytes(onnx.read_bytes()[:-10] + b"0123456789")
    shutil.copytree(bundle, root / "bundle-no-tokenizer")
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["tokenizer"]
    (root / "bundle-no-tokenizer" / "manifest.json").write_text(json.dumps(manifest))
    # 3. Files of every wrong kind.
    (root / "a-file.txt").write_text("just a file\n")
    (root / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (root / "empty.txt").write_text("\n\n")
    (root / "corrupt.npy").write_bytes(b"\x93NUMPY not really")
    import numpy as np

    np.save(root / "wrong-shape.npy", np.zeros((1, 4, 3, 3), dtype=np.float32))
    (root / "captions.csv").write_text("file_name,text\n0.png,a handwritten digit zero\n")
    (root / "bad-resolution.yaml").write_text(
        "name: bad\nmatrix:\n  - {model: teacher, component: unet, backend: pytorch, resolution: 100, "
        "source: builtin:tiny-sd}\n")
    (root / "readonly").mkdir()
    (root / "readonly").chmod(0o555)
    # 4. The user's own folders, which no command may change.
    mine = root / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "precious.txt").write_text("do not delete")
    (mine / "sub" / "notes.md").write_text("mine too")
    (root / "bundle2.failed").mkdir()
    (root / "bundle2.failed" / "precious.txt").write_text("a user folder that happens to end in .failed")
    for p in [root, *root.rglob("*")]:
        if p.name != "readonly":
            p.chmod(0o755 if p.is_dir() else 0o644)
    ws = Workspace(root=root, bundle=bundle, student=root / "student", mine=mine)
    ws.before = snapshot(root)
    yield ws
    (root / "readonly").chmod(0o755)
    shutil.rmtree(root, ignore_errors=True)


# ---- the cases -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One command with one bad argument. ``{ws}`` in an argument is the workspace folder."""

    id: str
    args: tuple[str, ...]
    needles: tuple[str, ...]  # all must appear in the error line
    usage: bool = False  # refused by argparse itself (wrong type / unknown choice)
    script: str | None = None
    unprivileged: bool = False  # a permission case: run as an ordinary user


def case(id, *args, needles=(), **kw) -> Case:
    return Case(id, tuple(args), tuple(needles), **kw)


EXPORT = ("export", "--model", "builtin:tiny-sd")
GENERATE = ("generate", "--bundle", "{ws}/bundle", "--prompt", "a digit", "--steps", "2")
DISTILL = ("distill", "--teacher", "builtin:tiny-sd", "--variant", "bk-small", "--data", "{ws}/captions.csv",
           "--resolution", "64")
EVAL = ("eval", "--model", "builtin:mini-sd-digits", "--captions", "{ws}/captions.csv", "--feature-extractor",
        "digits", "--metrics", "clip")

CASES = [
    # the README's example, word for word
    case("readme-example", "export", "--model", "builtin:sd-v1.4", "--height", "100", "--out", "bundle/",
         needles=("error: --height 100 is not a positive multiple of 64 (VAE factor 8 x U-Net factor 8 for "
                  "builtin:sd-v1.4); use 64 or 128",)),
    # export: sizes, the student folder, prompt files, output folders, choices
    case("export-height-not-multiple", *EXPORT, "--height", "100", "--out", "{ws}/x",
         needles=("--height 100", "multiple of 64", "use 64 or 128")),
    case("export-width-zero", *EXPORT, "--width", "0", "--out", "{ws}/x", needles=("--width", "positive")),
    case("export-height-wrong-type", *EXPORT, "--height", "big", "--out", "{ws}/x", usage=True,
         needles=("--height", "invalid int value")),
    case("export-unet-missing", *EXPORT, "--unet", "{ws}/nope", "--out", "{ws}/x",
         needles=("--unet", "no such U-Net folder")),
    case("export-unet-not-a-unet", *EXPORT, "--unet", "{ws}/not-a-unet", "--out", "{ws}/x",
         needles=("--unet", "no config.json", "bksdm-edge build")),
    case("export-unet-truncated-safetensors", *EXPORT, "--unet", "{ws}/student-truncated", "--out", "{ws}/x",
         needles=("{ws}/student-truncated: cannot load this U-Net folder", "truncated or corrupt")),
    case("export-model-folder-truncated", "export", "--model", "{ws}/pipeline-truncated", "--out", "{ws}/x",
         needles=("{ws}/pipeline-truncated: could not load its vae", "truncated or corrupt")),
    case("export-unet-is-a-file", *EXPORT, "--unet", "{ws}/a-file.txt", "--out", "{ws}/x",
         needles=("--unet", "is a file")),
    case("export-calibration-missing", *EXPORT, "--precision", "int8", "--calibration-prompts", "{ws}/nope.txt",
         "--out", "{ws}/x", needles=("--calibration-prompts", "no such prompt file")),
    case("export-calibration-binary", *EXPORT, "--precision", "int8", "--calibration-prompts", "{ws}/binary.txt",
         "--out", "{ws}/x", needles=("--calibration-prompts", "not a UTF-8 text file")),
    case("export-calibration-empty", *EXPORT, "--precision", "int8", "--calibration-prompts", "{ws}/empty.txt",
         "--out", "{ws}/x", needles=("--calibration-prompts", "is empty")),
    case("export-calibration-steps-zero", *EXPORT, "--calibration-steps", "0", "--out", "{ws}/x",
         needles=("--calibration-steps must be >= 1",)),
    case("export-precision-unknown", *EXPORT, "--precision", "int4", "--out", "{ws}/x", usage=True,
         needles=("--precision", "invalid choice")),
    case("export-components-unknown", *EXPORT, "--components", "unet,refiner", "--out", "{ws}/x",
         needles=("refiner", "text_encoder")),
    case("export-model-unknown-builtin", "export", "--model", "builtin:nope", "--out", "{ws}/x",
         needles=("builtin:nope", "builtin:mini-sd")),
    case("export-overwrite-user-folder", *EXPORT, "--out", "{ws}/mine", "--overwrite",
         needles=("{ws}/mine", "did not write", "never writes into or replaces")),
    case("export-existing-bundle", *EXPORT, "--out", "{ws}/bundle", needles=("already holds a bundle", "--overwrite")),
    case("export-out-is-a-file", *EXPORT, "--out", "{ws}/a-file.txt", needles=("--out", "is a file")),
    case("export-out-under-a-file", *EXPORT, "--out", "{ws}/a-file.txt/bundle", needles=("is a file, not a folder",)),
    case("export-out-unwritable", *EXPORT, "--out", "{ws}/readonly/bundle", unprivileged=True,
         needles=("--out", "permission denied")),
    case("export-failed-sibling-is-users", *EXPORT, "--out", "{ws}/bundle2",
         needles=("bundle2.failed", "move that folder away")),
    # the export scripts: the same checks through the same handler
    case("to-onnx-height", "--model", "builtin:tiny-sd", "--height", "100", "--out", "{ws}/x",
         script="export/to_onnx.py", needles=("--height 100", "multiple of 64")),
    case("to-tflite-height", "--model", "builtin:tiny-sd", "--height", "100", "--out", "{ws}/x",
         script="export/to_tflite.py", needles=("--height 100", "multiple of 64")),
    case("to-coreml-width", "--model", "builtin:tiny-sd", "--width", "100", "--out", "{ws}/x",
         script="export/to_coreml.py", needles=("--width 100", "multiple of 64")),
    case("to-coreml-overwrite-user-folder", "--model", "builtin:tiny-sd", "--out", "{ws}/mine", "--overwrite",
         script="export/to_coreml.py", needles=("did not write",)),
    # generate: steps, latents, bundle, output image -- all before any denoising
    case("generate-steps-zero", *GENERATE, "--steps", "0", "--out", "{ws}/g.png", needles=("--steps must be >= 1",)),
    case("generate-steps-wrong-type", *GENERATE, "--steps", "many", "--out", "{ws}/g.png", usage=True,
         needles=("--steps", "invalid int value")),
    case("generate-guidance-nan", *GENERATE, "--guidance", "nan", "--out", "{ws}/g.png",
         needles=("--guidance", "finite")),
    case("generate-latents-missing", *GENERATE, "--latents-in", "{ws}/missing.npy", "--out", "{ws}/g.png",
         needles=("--latents-in", "no such latents file")),
    case("generate-latents-corrupt", *GENERATE, "--latents-in", "{ws}/corrupt.npy", "--out", "{ws}/g.png",
         needles=("--latents-in", "not a readable .npy")),
    case("generate-latents-wrong-shape", *GENERATE, "--latents-in", "{ws}/wrong-shape.npy", "--out", "{ws}/g.png",
         needles=("initial latents have shape (1, 4, 3, 3)",)),
    case("generate-latents-wrong-kind", *GENERATE, "--latents-in", "{ws}/a-file.txt", "--out", "{ws}/g.png",
         needles=("--latents-in", ".npy")),
    case("generate-out-folder-missing-parent-is-file", *GENERATE, "--out", "{ws}/a-file.txt/g.png",
         needles=("is a file, not a folder",)),
    case("generate-out-unwritable", *GENERATE, "--out", "{ws}/readonly/g.png", unprivileged=True,
         needles=("--out", "permission denied")),
    case("generate-out-is-a-folder", *GENERATE, "--out", "{ws}/mine", needles=("--out", "is a folder")),
    case("generate-out-not-an-image", *GENERATE, "--out", "{ws}/g.txt", needles=("--out", ".png")),
    case("generate-latents-out-not-npy", *GENERATE, "--latents-out", "{ws}/z.txt", "--out", "{ws}/g.png",
         needles=("--latents-out", ".npy")),
    case("generate-bundle-missing", "generate", "--bundle", "{ws}/nope", "--prompt", "x", "--out", "{ws}/g.png",
         needles=("--bundle", "no such bundle folder")),
    case("generate-bundle-user-folder", "generate", "--bundle", "{ws}/mine", "--prompt", "x", "--out", "{ws}/g.png",
         needles=("--bundle", "no manifest.json", "bksdm-edge export")),
    case("generate-bundle-tampered", "generate", "--bundle", "{ws}/bundle-tampered", "--prompt", "x", "--out",
         "{ws}/g.png", needles=("does not match its sha256",)),
    case("generate-bundle-manifest-edited", "generate", "--bundle", "{ws}/bundle-no-tokenizer", "--prompt", "x",
         "--out", "{ws}/g.png", needles=("lacks tokenizer", "export the bundle again")),
    case("generate-scheduler-unknown", *GENERATE, "--scheduler", "lms", "--out", "{ws}/g.png", usage=True,
         needles=("--scheduler", "invalid choice")),
    # validate
    case("validate-bundle-missing", "validate", "--bundle", "{ws}/nope", needles=("--bundle", "no such bundle folder")),
    case("validate-report-under-a-file", "validate", "--bundle", "{ws}/bundle", "--report", "{ws}/a-file.txt/r.json",
         needles=("is a file, not a folder",)),
    # build
    case("build-force-user-folder", "build", "--teacher", "builtin:tiny-sd", "--variant", "bk-small", "--out",
         "{ws}/mine", "--force", needles=("did not write",)),
    case("build-existing-student", "build", "--teacher", "builtin:tiny-sd", "--variant", "bk-small", "--out",
         "{ws}/student", needles=("already holds a student U-Net folder", "--force")),
    case("build-variant-unknown", "build", "--variant", "bk-huge", "--out", "{ws}/s", usage=True,
         needles=("--variant", "invalid choice")),
    case("build-teacher-unknown", "build", "--teacher", "builtin:nope", "--variant", "bk-small", "--out", "{ws}/s",
         needles=("builtin:nope",)),
    # distill: the same size rule as export, numbers in range, paths
    case("distill-resolution-not-multiple", *DISTILL, "--resolution", "100", "--out", "{ws}/run",
         needles=("--resolution 100", "multiple of 64")),
    case("distill-max-steps-zero", *DISTILL, "--max-steps", "0", "--out", "{ws}/run", needles=("--max-steps",)),
    case("distill-batch-size-zero", *DISTILL, "--batch-size", "0", "--out", "{ws}/run", needles=("--batch-size",)),
    case("distill-lr-negative", *DISTILL, "--lr", "-0.001", "--out", "{ws}/run", needles=("--lr",)),
    case("distill-ema-decay-out-of-range", *DISTILL, "--ema-decay", "1.5", "--out", "{ws}/run",
         needles=("--ema-decay", "[0, 1]")),
    case("distill-seed-negative", *DISTILL, "--seed", "-1", "--out", "{ws}/run", needles=("--seed",)),
    case("distill-data-missing", "distill", "--teacher", "builtin:tiny-sd", "--variant", "bk-small", "--data",
         "{ws}/nope.csv", "--resolution", "64", "--out", "{ws}/run", needles=("--data", "no such file")),
    case("distill-student-missing", *DISTILL, "--student", "{ws}/nope", "--out", "{ws}/run",
         needles=("--student", "no such U-Net folder")),
    case("distill-resume-missing", *DISTILL, "--resume", "{ws}/nope", "--out", "{ws}/run",
         needles=("--resume", "no such checkpoint folder")),
    case("distill-out-user-folder", *DISTILL, "--out", "{ws}/mine", needles=("not a distillation run",)),
    case("distill-steps-wrong-type", *DISTILL, "--max-steps", "1e3", "--out", "{ws}/run", usage=True,
         needles=("--max-steps", "invalid int value")),
    # distill-vae: the shared option checks, its own numbers, and --vae / --student sources (export, eval, profile)
    case("distill-vae-lambda-negative", "distill-vae", "--teacher", "builtin:tiny-sd", "--data", "{ws}/captions.csv",
         "--resolution", "64", "--lambda-edge", "-1", "--out", "{ws}/run", needles=("--lambda-edge must be >= 0",)),
    case("distill-vae-out-user-folder", "distill-vae", "--teacher", "builtin:tiny-sd", "--data", "{ws}/captions.csv",
         "--resolution", "64", "--out", "{ws}/mine", needles=("not a distillation run",)),
    case("distill-vae-student-missing", "distill-vae", "--teacher", "builtin:tiny-sd", "--data", "{ws}/captions.csv",
         "--resolution", "64", "--student", "{ws}/nope", "--out", "{ws}/run", needles=("--student", "no such folder")),
    case("export-vae-missing", *EXPORT, "--vae", "{ws}/nope", "--out", "{ws}/b", needles=("--vae", "no such folder")),
    case("export-vae-is-a-file", *EXPORT, "--vae", "{ws}/captions.csv", "--out", "{ws}/b",
         needles=("--vae", "is a file")),
    case("profile-vae-missing", "profile", "--components", "vae_decoder", "--vae", "./nope",
         needles=("--vae ./nope", "no such folder")),
    # cache-latents
    case("cache-resolution-not-multiple", "cache-latents", "--teacher", "builtin:tiny-sd", "--data",
         "{ws}/captions.csv", "--resolution", "100", "--cache-dir", "{ws}/cache", needles=("multiple of 64",)),
    case("cache-dir-exists", "cache-latents", "--teacher", "builtin:tiny-sd", "--data", "{ws}/captions.csv",
         "--resolution", "64", "--cache-dir", "{ws}/mine", needles=("already exists", "never overwritten")),
    case("cache-batch-zero", "cache-latents", "--teacher", "builtin:tiny-sd", "--data", "{ws}/captions.csv",
         "--resolution", "64", "--cache-dir", "{ws}/cache", "--encode-batch-size", "0",
         needles=("--encode-batch-size",)),
    # eval: mini-sd-digits has a factor-2 VAE, so its sizes are multiples of 16
    case("eval-resolution-not-multiple", *EVAL, "--resolution", "100", "--out", "{ws}/ev",
         needles=("--resolution 100", "multiple of 16", "use 96 or 112")),
    case("eval-steps-zero", *EVAL, "--steps", "0", "--out", "{ws}/ev", needles=("--steps must be >= 1",)),
    case("eval-captions-missing", "eval", "--captions", "{ws}/nope.csv", "--out", "{ws}/ev",
         needles=("--captions", "no such caption file")),
    case("eval-captions-wrong-kind", "eval", "--captions", "{ws}/wrong-shape.npy", "--out", "{ws}/ev",
         needles=("--captions", ".csv")),
    case("eval-metrics-unknown", *EVAL, "--metrics", "fid,beauty", "--out", "{ws}/ev", needles=("beauty", "clip")),
    case("eval-ref-missing", *EVAL, "--metrics", "fid", "--ref", "{ws}/nope.npz", "--out", "{ws}/ev",
         needles=("--ref", "no such reference statistics file")),
    case("eval-out-user-folder", *EVAL, "--limit", "1", "--resolution", "32", "--out", "{ws}/mine",
         needles=("did not write",)),
    # profile
    case("profile-resolution-not-multiple", "profile", "--resolution", "500", needles=("--resolution 500", "use 448 or 512")),
    case("profile-components-unknown", "profile", "--components", "unet,clip", needles=("clip", "text_encoder")),
    case("profile-unet-missing", "profile", "--unet", "{ws}/nope", needles=("--unet", "no such U-Net folder")),
    case("profile-json-is-a-folder", "profile", "--teacher", "builtin:tiny-sd", "--json", "{ws}/mine",
         needles=("--json", "is a folder")),
    # plan
    case("plan-show-resolution", "plan", "show", "bk-small", "--teacher", "builtin:tiny-sd", "--resolution", "100",
         needles=("--resolution 100", "multiple of 64")),
    case("plan-sensitivity-steps-zero", "plan", "sensitivity", "--teacher", "builtin:tiny-sd", "--steps", "0",
         "--out", "{ws}/sens", needles=("--steps must be >= 1",)),
    case("plan-sensitivity-prompts-missing", "plan", "sensitivity", "--teacher", "builtin:tiny-sd", "--prompts",
         "{ws}/nope.txt", "--out", "{ws}/sens", needles=("--prompts", "no such prompt file")),
    case("plan-sensitivity-out-user-folder", "plan", "sensitivity", "--teacher", "builtin:tiny-sd", "--out",
         "{ws}/mine", needles=("did not write",)),
    case("plan-search-top-zero", "plan", "search", "--teacher", "builtin:tiny-sd", "--budget", "macs=0.6", "--top",
         "0", "--out", "{ws}/search", needles=("--top must be >= 1",)),
    # bench
    case("bench-repeats-zero", "bench", "--repeats", "0", needles=("--repeats must be >= 1",)),
    case("bench-import-missing", "bench", "--import", "{ws}/nope.json", needles=("--import", "no such results file")),
    case("bench-config-missing", "bench", "--config", "{ws}/nope.yaml", needles=("nope.yaml", "does not exist")),
    case("bench-config-bad-resolution", "bench", "--config", "{ws}/bad-resolution.yaml", "--out", "{ws}/bench-out",
         needles=("resolution 100", "multiple of 64")),
    case("bench-out-user-folder", "bench", "--out", "{ws}/mine", needles=("did not write",)),
]


def _fill(args, ws: Workspace) -> list[str]:
    return [str(a).replace("{ws}", str(ws.root)) for a in args]


@pytest.fixture(scope="session")
def results(ws) -> dict[str, subprocess.CompletedProcess]:
    """Every case's process, run 4 at a time (each is a short process that stops before loading a model)."""
    def run(c: Case):
        return c.id, cli(*_fill(c.args, ws), script=c.script, unprivileged=c.unprivileged,
                         home=ws.root if c.unprivileged else None)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(run, CASES))


def test_case_ids_are_unique():
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_without_traceback(c: Case, results, ws):
    proc = results[c.id]
    line = usage_error_line(proc) if c.usage else error_line(proc)
    for needle in c.needles:
        assert needle.replace("{ws}", str(ws.root)) in line, line


def test_no_user_file_changed(results, ws):
    # Every case ran; the workspace (the user's folders, the bundle, the student, every input file) is as it was.
    assert snapshot(ws.root) == ws.before


# ---- what should work, does (and says what it replaced) -------------------------------------------------------


def test_build_force_replaces_only_our_student_and_says_so(ws, tmp_path):
    out = tmp_path / "student"
    shutil.copytree(ws.student, out)
    proc = cli("build", "--teacher", "builtin:tiny-sd", "--variant", "bk-tiny", "--out", out, "--force")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"replaced a student U-Net folder {out}" in proc.stderr
    assert json.loads((out / "bksdm_edge.json").read_text())["variant"] == "bk-tiny"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"


def test_generate_creates_missing_output_folders(ws, tmp_path):
    out = tmp_path / "new" / "folder" / "seven.png"
    proc = cli(*_fill(GENERATE, ws), "--out", out)
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-3000:]
    assert [p.name for p in out.parent.iterdir()] == ["seven.png"]  # written atomically: no temporary left


# ---- the library pieces behind the CLI, in-process --------------------------------------------------------------


def test_failed_reexport_keeps_the_previous_bundle(tmp_path):
    from bksdm_edge.export.bundle import FAILED_NOTE, REQUIRED_KEYS, BundleWriter, verify_bundle

    out = tmp_path / "b"
    with BundleWriter(out) as w:
        (w.root / "a.txt").write_text("good")
        w.commit({k: {} for k in REQUIRED_KEYS})
    with pytest.raises(RuntimeError):
        with BundleWriter(out, overwrite=True) as w:
            (w.root / "a.txt").write_text("half")
            raise RuntimeError("conversion failed")
    assert verify_bundle(out) and (out / "a.txt").read_text() == "good"
    note = (tmp_path / "b.failed" / FAILED_NOTE).read_text()
    assert "RuntimeError: conversion failed" in note and "not a bundle" in note
    # The remains are ours: the next failure replaces them, --overwrite may replace them.
    with pytest.raises(RuntimeError):
        with BundleWriter(out, overwrite=True):
            raise RuntimeError("again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "b.failed"]  # no temporary folders left


def test_temporary_folders_of_killed_writers_are_cleaned(tmp_path):
    from bksdm_edge.outputs import atomic_dir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a process id that no longer runs
    stale = tmp_path / f".b.tmp-{dead}-abcd"
    live = tmp_path / f".b.tmp-{os.getpid()}-efgh"  # a writer that still runs (here: this process)
    for folder in (stale, live):
        folder.mkdir()
        (folder / "half.bin").write_bytes(b"x")
    with atomic_dir(tmp_path / "b") as tmp:
        (tmp / "whole.bin").write_bytes(b"y")
    assert not stale.exists() and live.exists() and (tmp_path / "b" / "whole.bin").exists()


def test_claim_decides_before_any_work(tmp_path):
    from bksdm_edge.errors import OutputError
    from bksdm_edge.outputs import BUNDLE, STUDENT, claim

    assert claim(tmp_path / "new", (BUNDLE,), replace=False, flag="--out", option="--overwrite") is None
    (tmp_path / "empty").mkdir()
    assert claim(tmp_path / "empty", (BUNDLE,), replace=False, flag="--out", option="--overwrite") is None
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text('{"name": "some other tool"}')  # a manifest, but not ours
    with pytest.raises(OutputError, match="did not write"):
        claim(foreign, (BUNDLE, STUDENT), replace=True, flag="--out", option="--overwrite")
    assert (foreign / "manifest.json").exists()


def test_marker_files_are_the_writers_constants():
    from bksdm_edge import outputs
    from bksdm_edge.distill.cache import CACHE_META
    from bksdm_edge.distill.train import RUN_CONFIG
    from bksdm_edge.export.bundle import FAILED_NOTE, MANIFEST, VALIDATION
    from bksdm_edge.quality.eval import EVAL_CONFIG
    from bksdm_edge.plans.sensitivity import SENSITIVITY_JSON
    from bksdm_edge.student import STUDENT_META

    assert (outputs.BUNDLE.marker, outputs.FAILED_BUNDLE.marker, outputs.FAILED_VALIDATION.marker) == \
        (MANIFEST, FAILED_NOTE, VALIDATION)
    assert (outputs.STUDENT.marker, outputs.DISTILL_RUN.marker, outputs.LATENT_CACHE.marker,
            outputs.EVAL_RUN.marker) == (STUDENT_META, RUN_CONFIG, CACHE_META, EVAL_CONFIG)
    assert outputs.PLAN_SENSITIVITY.marker == SENSITIVITY_JSON
    assert outputs.PLAN_SEARCH_STARTED.marker == f"sensitivity/{SENSITIVITY_JSON}"


def test_eval_refuses_to_mix_images_of_another_run(tmp_path):
    from bksdm_edge.errors import OutputError
    from bksdm_edge.quality.eval import claim_eval_dir

    run = {"source": "builtin:mini-sd-digits", "unet": None, "captions": "c.csv", "resolution": 32, "steps": 10,
           "guidance_scale": 7.5, "seed": 0, "resize": None}
    claim_eval_dir(tmp_path / "ev", run)
    claim_eval_dir(tmp_path / "ev", run)  # the same run resumes
    with pytest.raises(OutputError, match=r"steps: 10 -> 25"):
        claim_eval_dir(tmp_path / "ev", {**run, "steps": 25})


def _handler(run, argv=()):
    from bksdm_edge.cli import run_entry_point

    return run_entry_point(list(argv), lambda a: None, run)


def test_unexpected_errors_are_short_and_point_to_debug(capfd):
    def boom(_):
        raise RuntimeError("kernel exploded\nsecond line")

    assert _handler(boom) == 1
    err = capfd.readouterr().err
    assert err.strip() == "error: unexpected RuntimeError: kernel exploded (run with --debug for the traceback)"
    assert _handler(boom, ["--debug"]) == 1
    err = capfd.readouterr().err
    assert "Traceback" in err and err.strip().endswith("error: unexpected RuntimeError: kernel exploded")


def test_expected_failures_map_to_exit_codes(capfd):
    from bksdm_edge.errors import ValidationFailed

    def raiser(exc):
        def run(_):
            raise exc
        return run

    cases = [
        (FileNotFoundError(2, "No such file or directory", "/data/x.bin"), 2, "/data/x.bin: no such file"),
        (PermissionError(13, "Permission denied", "/root/y"), 2, "/root/y: permission denied"),
        (MemoryError(), 2, "out of memory"),
        (ValidationFailed("validation of onnx-int8 failed (1 problem(s)):\n  - unet cosine 0.98 < 0.99"), 3,
         "validation of onnx-int8 failed"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ]
    for exc, code, needle in cases:
        assert _handler(raiser(exc)) == code
        err = capfd.readouterr().err
        assert err.startswith("error: ") and needle in err.splitlines()[0] and "Traceback" not in err, err
