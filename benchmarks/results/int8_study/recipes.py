"""Calibration-data / range variants for ONNX int8 U-Net: python recipes.py DIR BATCH variant..."""
import sys, time, pickle, json, re, numpy as np
from pathlib import Path
import onnx, onnxruntime as ort
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import load_tensors_data, save_tensors_data, TensorsData, TensorData
from bksdm_edge.export import onnx as ox
from bksdm_edge.export.validation import psnr, cosine
d = Path(sys.argv[1]); b = int(sys.argv[2])
val = pickle.load(open(d / "val.pkl", "rb")); calls = pickle.load(open(d / "calib.pkl", "rb"))
src = d / f"fp32-b{b}" / "model.onnx"
flat = [r for c in calls for r in c]
def batches(rows): return [{k: np.stack([np.asarray(r[k]) for r in rows[i:i + b]]) for k in rows[0]} for i in range(0, len(rows) - b + 1, b)]
model = onnx.load(str(src), load_external_data=False)
op_types = ["Conv", "Gemm", "MatMul"]
nodes = ox._nodes_to_quantize(model, op_types, "projections")
dtypes = {"sample": np.float32, "timestep": np.float32, "encoder_hidden_states": np.float32}
rng = np.random.default_rng(7)
shape_s, shape_e = flat[0]["sample"].shape, flat[0]["encoder_hidden_states"].shape
def seeded_rows(n):
    return [{"sample": rng.standard_normal(shape_s).astype(np.float32), "timestep": np.float32(rng.integers(0, 1000)),
             "encoder_hidden_states": rng.standard_normal(shape_e).astype(np.float32)} for _ in range(n)]
def ranges(name, rows, **kw):
    cache = d / f"rr-{name}-b{b}.json"
    if not cache.exists():
        t = time.process_time(); ox._calibrate(src, op_types, nodes, batches(rows), dtypes, cache, d, **kw)
        print(f"  calibrate {name}: {len(rows)} rows, cpu {time.process_time() - t:.0f}s", flush=True)
    return cache
def run(label, cache, keep=nodes):
    dst = d / f"rq-{label}.onnx"
    quantize_static(str(src), str(dst), None, quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types,
                    nodes_to_quantize=keep, per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(cache),
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    so = ort.SessionOptions(); so.log_severity_level = 3
    s = ort.InferenceSession(str(dst), so, providers=["CPUExecutionProvider"])
    res = {}
    for k, x in val["sets"].items():
        if x["sample"].shape[0] != b or k.endswith("pair") and b == 1: continue
        y = s.run(None, {n: x[n] for n in ("sample", "timestep", "encoder_hidden_states")})[0]
        res[k] = round(cosine(val["refs"][k], y), 5)
    print(json.dumps({"variant": label, "min": min(res.values()), **res}), flush=True)
    dst.unlink()
def merged(name, caches):
    out = d / f"rr-{name}-b{b}.json"
    ds = [load_tensors_data(c) for c in caches]
    data = {}
    for k in ds[0].keys():
        lo = min(float(x[k].range_value[0]) for x in ds if k in x); hi = max(float(x[k].range_value[1]) for x in ds if k in x)
        data[k] = TensorData(lowest=np.array(lo, dtype=np.float32), highest=np.array(hi, dtype=np.float32))
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), out); return out
graph_inputs = {i.name for i in model.graph.input}; graph_outputs = {o.name for o in model.graph.output}
# tensors that are (a cast of) a graph input: the TorchScript export casts ehs/sample before use
casts = {n.output[0] for n in model.graph.node if n.op_type in ("Cast", "Identity") and n.input[0] in graph_inputs}
io_nodes = {n.name for n in model.graph.node if (set(n.input) & (graph_inputs | casts)) or (set(n.output) & graph_outputs)}
print("io nodes:", sorted(x for x in io_nodes if x in set(nodes)))
for v in sys.argv[3:]:
    if v == "cur": run(v, ranges("cur", flat))
    elif v == "noio": run(v, ranges("cur", flat), [n for n in nodes if not re.search(r"/conv_in/|/conv_out/", n)])
    elif v == "seeded+": run(v, merged("seededplus", [ranges("cur", flat), ranges("seeded", seeded_rows(16))]))
    elif v == "seeded+noio": run(v, merged("seededplus", [ranges("cur", flat), ranges("seeded", seeded_rows(16))]), [n for n in nodes if not re.search(r"/conv_in/|/conv_out/", n)])
    elif v.startswith("iof"):  # io-adjacent nodes float, first k prompts
        k = int(v[3:]) if len(v) > 3 else 5; rows = [r for c in calls for r in c[2:2 + 2 * k]]
        run(v, ranges(f"p{k}", rows), [n for n in nodes if n not in io_nodes])
    elif v.startswith("first"):  # only the first k calls of each prompt (early trajectory)
        k = int(v[5:]); rows = [r for c in calls[:k] for r in c]; run(v, ranges(v, rows))
    elif v.startswith("p"):  # the first k prompts, every call
        k = int(v[1:]); rows = [r for c in calls for r in c[2:2 + 2 * k]]; run(v, ranges(v, rows))  # skip prompt 0 (= the validation prompt)
    elif v.startswith("n"):  # first N batches
        n = int(v[1:]); run(v, ranges(v, flat[:n]))
