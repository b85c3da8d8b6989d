"""``generate --inference-precision auto``: the eligible run-time settings are timed on the bundle's U-Net, the
fastest is kept and the decision cached (``bksdm_edge.runtime_speed``).

The tiny OpenVINO fp32 bundle (64 px) is copied with bf16 marked as passed for every component, and
``runtime_variant_unavailable`` is patched, so that f32 and bf16 are both eligible whatever this CPU has
(OpenVINO runs a bf16 hint as f32 on a CPU without bf16 units). The timer is patched where a test needs a known
outcome."""

import json
import shutil
import time

import pytest

pytest.importorskip("openvino")

from _export_helpers import tiny_ov_bundle  # noqa: E402
from bksdm_edge import runtime_speed  # noqa: E402
from bksdm_edge.export.openvino import execution_info  # noqa: E402
from bksdm_edge.export.registry import get_target  # noqa: E402
from bksdm_edge.generate import BundlePipeline  # noqa: E402

PROMPT = "a photo of a red car"


@pytest.fixture
def both_eligible(tmp_path, monkeypatch):
    """A copy of the tiny OpenVINO bundle whose bf16 passed, on a 'CPU' that runs bf16; the cache under tmp_path."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_ov_bundle("fp32"), bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for entry in manifest["components"].values():
        entry["extra"]["runtime_validation"]["bf16"] = {"checked": True, "passed": True, "failures": []}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    target = get_target("openvino", "fp32")
    monkeypatch.setattr(target, "runtime_variant_unavailable", classmethod(lambda cls, variant: None))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return bundle


def fake_timer(monkeypatch, seconds: dict[str, float]) -> list[str]:
    """Make ``time_setting`` report ``seconds`` per setting (after loading it, as the real one does); returns the
    settings it was asked for, in order."""
    asked = []

    def timer(load, setting):
        asked.append(setting)
        load(setting)()
        return seconds[setting]

    monkeypatch.setattr(runtime_speed, "time_setting", timer)
    return asked


def no_timer(monkeypatch):
    def timer(load, setting):
        raise AssertionError(f"measured {setting}; expected no measurement")

    monkeypatch.setattr(runtime_speed, "time_setting", timer)


def cache_entries() -> dict:
    return json.loads(runtime_speed.cache_path().read_text())["entries"]


def test_auto_times_each_eligible_setting_then_reads_the_cache(both_eligible, monkeypatch):
    real = runtime_speed.time_setting
    asked = []
    monkeypatch.setattr(runtime_speed, "time_setting", lambda load, s: asked.append(s) or real(load, s))
    pipe = BundlePipeline(both_eligible, threads=1)
    assert asked == ["f32", "bf16"]
    (entry,) = cache_entries().values()
    assert sorted(entry["seconds"]) == ["bf16", "f32"] and all(v > 0 for v in entry["seconds"].values())
    assert pipe.runtime == entry["runtime"] == runtime_speed.pick(entry["seconds"], "f32")
    assert entry["identity"]["threads"] == 1 and entry["identity"]["isa"] is not None
    assert pipe.runtime_reason.startswith("auto: measured U-Net call ")
    assert f"cached in {runtime_speed.cache_path()}" in pipe.runtime_reason
    image, _ = pipe(PROMPT, steps=2)
    assert image.shape == (64, 64, 3)

    no_timer(monkeypatch)
    again = BundlePipeline(both_eligible, threads=1)
    assert again.runtime == pipe.runtime and again.runtime_reason.startswith("auto: cached measurement")
    # Another thread count is another measurement.
    asked = fake_timer(monkeypatch, {"f32": 0.5, "bf16": 0.25})
    assert BundlePipeline(both_eligible, threads=2).runtime == "bf16" and asked == ["f32", "bf16"]
    assert len(cache_entries()) == 2


@pytest.mark.parametrize("bf16_s,expected,medians", [(0.25, "bf16", "bf16 0.25 s vs f32 0.5 s"),
                                                     (0.96, "f32", "f32 0.5 s vs bf16 0.96 s"),
                                                     (0.49, "f32", "bf16 0.49 s vs f32 0.5 s")],
                         ids=["bf16-faster", "bf16-slower", "bf16-within-noise"])
def test_auto_keeps_the_fastest_measured_setting(both_eligible, monkeypatch, capsys, bf16_s, expected, medians):
    """The fastest median wins; another setting than the default (f32) only when MIN_GAIN faster. The cached
    decision is what the next run uses."""
    from bksdm_edge.cli import main

    fake_timer(monkeypatch, {"f32": 0.5, "bf16": bf16_s})
    out = both_eligible.parent / "a.png"
    args = ["generate", "--bundle", str(both_eligible), "--prompt", PROMPT, "--steps", "2", "--out", str(out)]
    assert main(args) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "inference precision" in x)
    assert line == (f"openvino fp32 bundle, inference precision {expected} (auto: measured U-Net call {medians} on "
                    f"this CPU; cached in {runtime_speed.cache_path()})")
    no_timer(monkeypatch)
    pipe = BundlePipeline(both_eligible)
    assert pipe.runtime == expected and pipe.runtime_reason.startswith("auto: cached measurement")
    if expected == "f32":  # a bf16 hint reads back as f32 on a CPU without bf16 units: only f32 is telling
        assert execution_info(pipe.components["unet"].run_raw.compiled)["inference_precision"] == "f32"


def test_a_named_precision_or_a_single_eligible_setting_skips_measurement(both_eligible, monkeypatch):
    no_timer(monkeypatch)
    for name in ("f32", "bf16"):
        pipe = BundlePipeline(both_eligible, inference_precision=name)
        assert pipe.runtime == name and pipe.runtime_reason == "as asked"
    target = get_target("openvino", "fp32")
    monkeypatch.setattr(target, "runtime_variant_unavailable", classmethod(lambda cls, variant: "no bf16 units"))
    pipe = BundlePipeline(both_eligible)
    assert pipe.runtime == "f32" and pipe.runtime_reason == "auto: the only one eligible; bf16: no bf16 units"
    assert not runtime_speed.cache_path().exists()


@pytest.mark.parametrize("content", [
    "{not json", "[]", json.dumps({"version": 99, "entries": {}}),
    "ENTRY",  # this bundle's own key holding a broken entry
], ids=["garbage", "not-a-dict", "other-version", "broken-entry"])
def test_a_corrupt_cache_is_measured_again_and_rewritten(both_eligible, monkeypatch, content):
    path = runtime_speed.cache_path()
    path.parent.mkdir(parents=True)
    if content == "ENTRY":
        fake_timer(monkeypatch, {"f32": 0.5, "bf16": 0.25})
        BundlePipeline(both_eligible)
        doc = json.loads(path.read_text())
        (key,) = doc["entries"]
        doc["entries"][key]["seconds"] = {"f32": "fast"}
        content = json.dumps(doc)
    path.write_text(content)
    asked = fake_timer(monkeypatch, {"f32": 0.5, "bf16": 0.25})
    pipe = BundlePipeline(both_eligible)
    assert asked == ["f32", "bf16"] and pipe.runtime == "bf16"
    (entry,) = cache_entries().values()
    assert entry["seconds"] == {"f32": 0.5, "bf16": 0.25} and entry["runtime"] == "bf16"


def test_an_unwritable_cache_costs_a_measurement_not_the_run(both_eligible, monkeypatch, tmp_path):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # bksdm-edge/ cannot be created below a file
    fake_timer(monkeypatch, {"f32": 0.5, "bf16": 0.25})
    pipe = BundlePipeline(both_eligible)
    assert pipe.runtime == "bf16" and "; not cached: " in pipe.runtime_reason


def test_time_setting_warms_up_then_takes_the_median(monkeypatch):
    """One warm-up call, then TIMED_CALLS; calls of a few milliseconds are repeated until MIN_TIMED_S."""
    calls = []

    def load(setting):
        return lambda: (calls.append(setting), time.sleep(runtime_speed.MIN_TIMED_S / 2))

    seconds = runtime_speed.time_setting(load, "f32")
    assert len(calls) == 1 + runtime_speed.TIMED_CALLS
    assert runtime_speed.MIN_TIMED_S / 2 <= seconds < runtime_speed.MIN_TIMED_S
    calls.clear()
    runtime_speed.time_setting(lambda s: lambda: calls.append(s), "f32")
    assert len(calls) == 1 + runtime_speed.MAX_TIMED_CALLS


def test_the_measurement_key_is_torch_free(tmp_path):
    """``identity`` reads the CPU's model and flags through bench.machine: generate must still not import torch."""
    import subprocess
    import sys
    from pathlib import Path

    manifest = tiny_ov_bundle("fp32") / "manifest.json"
    code = ("import sys\nfrom bksdm_edge import generate, runtime_speed\n"
            f"ident = runtime_speed.identity({str(manifest)!r}, 1)\n"
            "assert ident['cpu'] and ident['threads'] == 1 and len(ident['manifest_sha256']) == 64, ident\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nprint('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]
