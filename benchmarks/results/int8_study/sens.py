"""Per-group sensitivity: calibrate once, quantize with groups excluded, evaluate. python sens.py DIR BATCH [groups...]"""
import sys, time, pickle, json, re, numpy as np
from pathlib import Path
import onnx, onnxruntime as ort
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from bksdm_edge.export import onnx as ox
from bksdm_edge.export.validation import psnr, cosine
d = Path(sys.argv[1]); b = int(sys.argv[2])
val = pickle.load(open(d / "val.pkl", "rb")); calls = pickle.load(open(d / "calib.pkl", "rb"))
src = d / f"fp32-b{b}" / "model.onnx"
flat = [r for c in calls for r in c]
cal = [{k: np.stack([np.asarray(r[k]) for r in flat[i:i + b]]) for k in flat[0]} for i in range(0, len(flat) - b + 1, b)]
model = onnx.load(str(src), load_external_data=False)
op_types = ["Conv", "Gemm", "MatMul"]
nodes = ox._nodes_to_quantize(model, op_types, "projections")
dtypes = {"sample": np.float32, "timestep": np.float32, "encoder_hidden_states": np.float32}
cache = d / f"ranges-b{b}.json"
if not cache.exists():
    t = time.time(); ox._calibrate(src, op_types, nodes, cal, dtypes, cache, d); print("calibrate", round(time.time() - t), flush=True)
GROUPS = {
    "none": None, "conv_in_out": r"/conv_in/|/conv_out/", "time": r"time_embedding|time_emb_proj",
    "resnet_conv": r"resnets\.\d+/conv", "shortcut": r"conv_shortcut", "updown": r"samplers",
    "proj_in_out": r"attentions\.\d+/proj_(in|out)", "attn1": r"attn1/to_", "attn2_q_out": r"attn2/to_(q|out)",
    "attn2_kv": r"attn2/to_(k|v)", "ff0": r"ff/net\.0", "ff2": r"ff/net\.2", "all_matmul": r"MatMul|Gemm",
}
wanted = sys.argv[3:] or list(GROUPS)
so = ort.SessionOptions(); so.log_severity_level = 3
for g in wanted:
    pat = GROUPS[g]
    keep = [n for n in nodes if not (pat and re.search(pat, n))]
    dst = d / f"sens-{g}.onnx"
    t = time.time()
    quantize_static(str(src), str(dst), None, quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types,
                    nodes_to_quantize=keep, per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(cache),
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    s = ort.InferenceSession(str(dst), so, providers=["CPUExecutionProvider"])
    res = {}
    for k, x in val["sets"].items():
        if x["sample"].shape[0] != b: continue
        y = s.run(None, {n: x[n] for n in ("sample", "timestep", "encoder_hidden_states")})[0]
        res[k] = round(cosine(val["refs"][k], y), 5)
    print(json.dumps({"excluded": g, "n_quantized": len(keep), "q_s": round(time.time() - t), **res}), flush=True)
    dst.unlink()
