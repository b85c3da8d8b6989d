"""Stage 1 of the full-size ONNX int8 study: record inputs + refs, export fp32 ONNX at batch 1 and 2.
python study_record.py SRC STUDENT OUT NPROMPTS [SIZE]"""
import sys, time, pickle, json, numpy as np, torch
from pathlib import Path
from bksdm_edge.loading import load_model
from bksdm_edge.export.components import COMPONENTS, ShapeConfig
from bksdm_edge.export.inputs import record_pipeline_inputs, read_prompts, seeded_input_sets
from bksdm_edge.export import onnx as ox
src, student, out, nprompts = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
size = int(sys.argv[5]) if len(sys.argv) > 5 else 512
out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(2)
T = {}
t = time.time(); m = load_model(src, unet=None if student == "-" else student); T["load"] = time.time() - t
shape1 = ShapeConfig(height=size, width=size, batch=1)
spec = COMPONENTS["unet"]
if not (out / "calib.pkl").exists():
    t = time.time()
    rec = record_pipeline_inputs(m, shape1, read_prompts()[:nprompts], steps=4, seed=1000, components=("unet",))["unet"]
    T["record_calib"] = time.time() - t
    pickle.dump(rec, open(out / "calib.pkl", "wb"))
    t = time.time()
    val = record_pipeline_inputs(m, shape1, ["a photo of an astronaut riding a horse on mars"], steps=4, seed=0, components=("unet",))["unet"]
    T["record_val"] = time.time() - t
    sets = {}
    n = len(val)
    for s in sorted({0, n // 2, n - 1}):
        for j, row in enumerate(val[s]):
            sets[f"traj{s}:{j}"] = {k: np.asarray(v)[None] for k, v in row.items()}
        sets[f"traj{s}:pair"] = {k: np.stack([np.asarray(r[k]) for r in val[s]]) for k in val[s][0]}
    for b in (1, 2):
        for seed in (0, 1, 2):
            x = spec.example_inputs(m, ShapeConfig(height=size, width=size, batch=b), seed)
            sets[f"seed{seed}:b{b}"] = {k: v.numpy() for k, v in x.items()}
    mod = spec.module(m)
    refs = {}
    t = time.time()
    with torch.no_grad():
        for k, x in sets.items():
            refs[k] = mod(*(torch.from_numpy(x[n]) for n in spec.input_names)).numpy()
    T["refs"] = time.time() - t
    pickle.dump({"sets": sets, "refs": refs}, open(out / "val.pkl", "wb"))
mod = spec.module(m)
for b in (1, 2):
    d = out / f"fp32-b{b}"
    if (d / "model.onnx").exists():
        continue
    d.mkdir(exist_ok=True)
    t = time.time()
    ox.export_fp32(mod, spec.example_inputs(m, ShapeConfig(height=size, width=size, batch=b)), spec.output_names, d / "tmp.onnx")
    import onnx
    mo = onnx.load(str(d / "tmp.onnx")); ox.save_model(mo, d / "model.onnx", None); del mo
    for f in d.iterdir():
        if f.name.startswith("tmp") or (f.name not in ("model.onnx", "model.onnx_data")): f.unlink()
    T[f"export_b{b}"] = time.time() - t
print(json.dumps(T))
(out / "times_record.json").write_text(json.dumps(T))
