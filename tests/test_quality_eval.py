"""``bksdm-edge eval`` end to end on tiny inputs, offline: builtin:tiny-sd + the digit scorer as feature extractor."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from bksdm_edge.quality import digits
from bksdm_edge.quality.eval import EvalConfig, EvalError, evaluate, read_captions, save_reference_stats


@pytest.fixture(scope="module")
def real_digits(tmp_path_factory):
    """A folder of 40 held-out real digits as 32 px PNGs (the FID reference)."""
    folder = tmp_path_factory.mktemp("real")
    images = digits.upscale(digits.load_digit_split().test_images[:40], 32)
    for i, im in enumerate(images):
        Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def _tiny_cfg(**kw):
    base = dict(resolution=None, resize=32, steps=2, guidance_scale=2.0, batch=4, feature_extractor="digits")
    return EvalConfig(**{**base, **kw})


def test_read_captions_csv_and_txt(tmp_path):
    csv = tmp_path / "metadata.csv"
    csv.write_text("file_name,text\nCOCO_val2014_000000000042.jpg,a handwritten digit four\nb.jpg,\"a cat, asleep\"\n")
    caps = read_captions(csv)
    assert [c.file_name for c in caps] == ["COCO_val2014_000000000042.png", "b.png"]
    assert caps[1].text == "a cat, asleep"
    txt = tmp_path / "caps.txt"
    txt.write_text("one\n\ntwo\nthree\n")
    assert [c.text for c in read_captions(txt, limit=2)] == ["one", "two"]
    bad = tmp_path / "bad.csv"
    bad.write_text("file_name,prompt\na.png,x\n")
    with pytest.raises(EvalError, match="text"):
        read_captions(bad)


def test_eval_end_to_end_with_digit_features(tmp_path, real_digits):
    caps = tmp_path / "caps.txt"
    caps.write_text("\n".join(digits.caption(d % 10) for d in range(6)) + "\n")
    out = tmp_path / "run"
    rec = evaluate("builtin:tiny-sd", caps, out, _tiny_cfg(), ref=real_digits)
    # tiny-sd generates at 64 px; the scored copies are resized to 32 px.
    assert len(list((out / "im64").glob("*.png"))) == 6 and len(list((out / "im32").glob("*.png"))) == 6
    assert rec["n_images"] == 6 and rec["prompt_accuracy_n"] == 6
    assert rec["fid"] > 0 and 1.0 <= rec["is"] <= 10.0 and 0.0 <= rec["prompt_accuracy"] <= 1.0
    assert json.loads((out / "metrics.json").read_text())["fid"] == pytest.approx(rec["fid"])

    # Reference statistics saved as npz give the same FID; a rerun resumes (keeps the images).
    npz = save_reference_stats(real_digits, tmp_path / "ref.npz", "digits", size=32)
    again = evaluate("builtin:tiny-sd", caps, out, _tiny_cfg(metrics=("fid",)), ref=npz)
    assert again["fid"] == pytest.approx(rec["fid"], rel=1e-6)


def test_eval_real_digits_score_well(real_digits, tmp_path):
    """Scoring real digits against real digits: low FD, high IS, and a student path via score_folder."""
    from bksdm_edge.quality.eval import Caption, score_folder

    split = digits.load_digit_split()
    caps = [Caption(f"{i:03d}.png", digits.caption(int(split.test_labels[i]))) for i in range(40)]
    scores = score_folder(real_digits, caps, _tiny_cfg(), ref=real_digits)
    assert scores["fid"] == pytest.approx(0.0, abs=1e-6)
    assert scores["prompt_accuracy"] > 0.9 and scores["is"] > 3  # 10 splits of 4 images cap IS at 4


def test_eval_cli_offline(tmp_path, real_digits, capsys):
    from bksdm_edge.cli import main

    caps = tmp_path / "caps.csv"
    caps.write_text("file_name,text\n" + "".join(f"{d}.jpg,{digits.caption(d)}\n" for d in range(3)))
    rc = main(["eval", "--model", "builtin:tiny-sd", "--captions", str(caps), "--out", str(tmp_path / "o"),
               "--ref", str(real_digits), "--feature-extractor", "digits", "--resolution", "0", "--resize", "32",
               "--steps", "2", "--guidance-scale", "2"])
    assert rc == 0
    assert "prompt_accuracy" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "o" / "im32").iterdir()) == ["0.png", "1.png", "2.png"]


def test_eval_errors(tmp_path):
    caps = tmp_path / "c.txt"
    caps.write_text("a digit one\n")
    with pytest.raises(EvalError, match="reference"):
        evaluate("builtin:tiny-sd", caps, tmp_path / "o", _tiny_cfg())
    with pytest.raises(EvalError, match="unknown metrics"):
        evaluate("builtin:tiny-sd", caps, tmp_path / "o", _tiny_cfg(metrics=("kid",)))
    (tmp_path / "bad.npz").write_bytes(b"")
    np.savez(tmp_path / "bad.npz", mean=np.zeros(2))
    from bksdm_edge.quality.eval import _Scorers, reference_stats

    with pytest.raises(EvalError, match="mu"):
        reference_stats(tmp_path / "bad.npz", _Scorers("digits"), 32)
