"""Compile the Kotlin engine and run its JUnit tests (golden vectors included) via test.sh."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

TEST_SH = Path(__file__).resolve().parents[1] / "android_demo" / "engine" / "test.sh"


@pytest.mark.skipif(
    shutil.which("kotlinc") is None,
    reason="kotlinc is not installed (apt-get install -y kotlin junit4); CI installs it",
)
def test_kotlin_engine_unit_tests_pass():
    # First run compiles (~15 s CPU with kotlinc 1.3); later runs reuse build/test-sh/.
    proc = subprocess.run(["bash", str(TEST_SH)], capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "OK (" in proc.stdout, output[-6000:]
