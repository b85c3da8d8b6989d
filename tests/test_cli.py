import os
import re
import subprocess
import sys
from pathlib import Path


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_generate_command_does_not_import_torch():
    # The bundle runtime must work on machines without PyTorch: parsing `generate` imports no torch.
    proc = _run("import sys; from bksdm_edge.cli import build_parser; "
                "build_parser(['generate', '--bundle', 'b']).parse_args(['generate', '--bundle', 'b', '--prompt', 'p', '--out', 'x.png']); "
                "assert 'torch' not in sys.modules, 'torch imported'")
    assert proc.returncode == 0, proc.stderr


def test_help_lists_every_command():
    proc = subprocess.run([sys.executable, "-m", "bksdm_edge", "--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0
    for command in ("build", "profile", "distill", "cache-latents", "export", "validate", "generate", "bench", "eval"):
        assert command in proc.stdout, command


def test_user_errors_exit_non_zero_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bksdm_edge", "build", "--teacher", "builtin:nope", "--variant",
                           "bk-small", "--out", str(tmp_path / "s")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Unknown built-in model" in proc.stderr and "Traceback" not in proc.stderr


# ---- a quiet console: only our progress and messages reach stderr (issue 15 part 4, issue 18 "Noise") ----------

ROOT = Path(__file__).resolve().parents[1]
# Everything of ours that may appear on stderr in these runs: progress bars and the lines of `notice`.
OUR_STDERR = ("recording pipeline inputs", "exporting ", "validating", "denoising", "replaced ")
# The export's stage log (bksdm_edge/export/stages.py): "LABEL ...", "LABEL: 2.5 s (cpu 1.6 s), peak 0.5 GiB", and a
# stage's progress bar "LABEL:  50%|...".
STAGE_LINE = re.compile(r"^.+( \.\.\.|: \d+\.\d s \(cpu \d+\.\d s\), peak \d+\.\d GiB|: +\d+%\|.*)$")
# What dependencies print when let through (used to prove --verbose shows it and the default does not).
CHATTER = ("Warning", "warnings.warn", "torchao", "torchvision", "I0000", "W0000", "absl", "INFO:", "TensorFlow",
           "XNNPACK", "copyreg", "Running MIL")


def _console_lines(text: str) -> list[str]:
    return [part.strip() for line in text.splitlines() for part in line.split("\r") if part.strip()]


def _run_quiet(*args, script=None):
    program = [str(ROOT / script)] if script else ["-m", "bksdm_edge"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # a user's shell does not set it: the quiet console must not need it
    proc = subprocess.run([sys.executable, *program, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _assert_only_ours(proc):
    foreign = [line for line in _console_lines(proc.stderr)
               if not line.startswith(OUR_STDERR) and not STAGE_LINE.match(line)]
    assert not foreign, foreign[:10]
    chatter = [line for line in _console_lines(proc.stdout) if any(c in line for c in CHATTER)]
    assert not chatter, chatter[:10]


def test_export_and_generate_print_only_our_output(tmp_path):
    import json
    import shutil

    from _export_helpers import tiny_bundle

    # An --overwrite export over a bundle of ours: quiet, and it says what it replaced.
    bundle = tmp_path / "onnx"
    shutil.copytree(tiny_bundle("fp32"), bundle)
    export = _run_quiet("export", "--model", "builtin:tiny-sd", "--components", "text_encoder", "--out", bundle,
                        "--overwrite")
    _assert_only_ours(export)
    lines = _console_lines(export.stderr)
    assert "text_encoder: convert (onnx-fp32) ..." in lines  # our progress (the export's stage log) still shows
    assert f"replaced a bundle {bundle}" in lines
    assert list(json.loads((bundle / "manifest.json").read_text())["components"]) == ["text_encoder"]
    generate = _run_quiet("generate", "--bundle", tiny_bundle("fp32"), "--prompt", "a digit", "--steps", "2",
                          "--out", tmp_path / "x.png")
    _assert_only_ours(generate)
    assert any(line.startswith("denoising") for line in _console_lines(generate.stderr))


def test_export_scripts_print_only_our_output(tmp_path):
    # One component each keeps this quick; the chatter (TF/absl C++ lines, copyreg FutureWarnings, coremltools'
    # pass bars, torchao notices) comes from the converters' imports and first use, which one component triggers.
    for script in ("export/to_tflite.py", "export/to_coreml.py"):
        _assert_only_ours(_run_quiet("--model", "builtin:tiny-sd", "--components", "text_encoder", "--out",
                                     tmp_path / script.split("_")[-1], script=script))


def test_verbose_shows_the_dependencies_output():
    # Profiling imports diffusers (and with it torchao's and diffusers' import notices) in seconds.
    quiet = _run_quiet("profile", "--teacher", "builtin:tiny-sd")
    _assert_only_ours(quiet)
    assert quiet.stderr.strip() == ""
    verbose = _run_quiet("profile", "--teacher", "builtin:tiny-sd", "--verbose")
    assert any(c in verbose.stderr for c in CHATTER), verbose.stderr[-2000:]


def test_quiet_console_routes_by_writer(capfd):
    import warnings

    from bksdm_edge.console import quiet_console, stream
    from bksdm_edge.errors import BksdmWarning

    dependency = compile("import sys\nsys.stderr.write('dependency print\\n')\n",
                         "/venv/lib/python3.11/site-packages/somelib/noisy.py", "exec")
    with quiet_console() as quiet, warnings.catch_warnings():
        warnings.simplefilter("always")  # the suite's config ignores UserWarning/FutureWarning
        quiet.keep_log = True
        print("our message", file=sys.stderr)
        exec(dependency, {})
        os.write(2, b"native log line\n")
        warnings.warn("a dependency's deprecation", FutureWarning)
        warnings.warn("a warning of ours", BksdmWarning)
        print("named console", file=stream())
    console = capfd.readouterr().err
    log = quiet.log_path.read_text()
    quiet.log_path.unlink()
    assert "our message" in console and "named console" in console and "a warning of ours" in console
    for line in ("dependency print", "native log line", "a dependency's deprecation"):
        assert line in log and line not in console
