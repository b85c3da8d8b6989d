import json
import subprocess
import sys

import pytest

from bksdm_edge.loading import ModelSourceError, load_model
from bksdm_edge.profiler import profile_teacher_and_students

# The BK-SDM paper's Table 1 (U-Net, 512 px): parameters and paper-convention MACs.
PAPER = {
    "teacher": (859_520_964, 338.7),
    "bk-base": (579_384_964, 223.8),
    "bk-small": (482_346_884, 217.7),
    "bk-tiny": (323_384_964, 205.0),
}


def test_profile_reproduces_the_paper_for_sd_v14():
    rows = {r.name: r for r in profile_teacher_and_students("builtin:sd-v1.4", ["bk-base", "bk-small", "bk-tiny"])}
    for name, (params, gmacs) in PAPER.items():
        assert rows[name].params == params, name
        assert abs(rows[name].macs_paper / 1e9 - gmacs) <= 0.1, (name, rows[name].macs_paper)
        assert rows[name].macs_full > rows[name].macs_paper  # attention matmuls counted on top


def test_profile_text_encoder_and_vae_decoder_match_the_paper():
    rows = profile_teacher_and_students("builtin:sd-v1.4", components=["text_encoder", "vae_decoder"])
    te, dec = rows
    assert round(te.params / 1e6, 1) == 123.1 and round(te.macs_paper / 1e9, 1) == 6.5
    assert round(dec.params / 1e6, 1) == 49.5 and abs(dec.macs_paper / 1e9 - 1240.1) < 1.0


def test_profile_cli_writes_json(tmp_path):
    out = tmp_path / "p.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bksdm_edge", "profile", "--teacher", "builtin:sd-v2.1-base", "--variants", "all",
         "--json", str(out)], capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    names = [m["name"] for m in data["models"]]
    assert names == ["teacher", "bk-base", "bk-small", "bk-tiny"]
    for m in data["models"]:
        assert {"name", "params", "macs_paper", "macs_full", "resolution"} <= set(m)
    assert data["models"][0]["params"] == 865_910_724  # SD-v2.1 U-Net
    assert "| bk-tiny |" in proc.stdout


def test_unknown_builtin_lists_the_choices():
    with pytest.raises(ModelSourceError, match="builtin:sd-v1.4"):
        load_model("builtin:sd-v9")


def test_folder_without_model_index_is_refused(tmp_path):
    with pytest.raises(ModelSourceError, match="model_index.json"):
        load_model(str(tmp_path))


def test_hub_id_offline_and_not_cached_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelSourceError, match="HF_HUB_OFFLINE|cache"):
        load_model("CompVis/stable-diffusion-v1-4", components=("unet",))


def test_local_pipeline_folder_round_trip(tiny_model, tmp_path):
    tiny_model.to_pipeline().save_pretrained(tmp_path / "pipe")
    loaded = load_model(str(tmp_path / "pipe"))
    assert loaded.family == "sd-v1"
    assert loaded.unet.config.block_out_channels == tiny_model.unet.config.block_out_channels
    assert loaded.tokenizer("a cat").input_ids == tiny_model.tokenizer("a cat").input_ids


def test_builtin_tokenizer_is_real_clip():
    model = load_model("builtin:tiny-sd", components=("tokenizer",))
    # Token ids of openai/clip-vit-large-patch14 for this prompt.
    assert model.tokenizer("a photo of an astronaut riding a horse").input_ids == [
        49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 49407]
    assert len(model.tokenizer) == 49408


def test_builtin_weights_are_seeded():
    a = load_model("builtin:tiny-sd", components=("unet",)).unet.state_dict()
    b = load_model("builtin:tiny-sd", components=("unet", "vae")).unet.state_dict()
    assert all((a[k] == b[k]).all() for k in a)
