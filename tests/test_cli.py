import subprocess
import sys


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
