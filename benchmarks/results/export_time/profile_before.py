"""Stage breakdown of an export on the code as it is (no stage log yet): wrap its functions in stages.

python profile_before.py LOGJSON -- <bksdm-edge export args>
"""
import json, sys, functools
from bksdm_edge.export.stages import StageLog, stage
from bksdm_edge.export import pipeline, inputs, onnx as ox, validation
log_path, args = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]

def wrap(mod, name, label, component_arg=None):
    fn = getattr(mod, name)
    @functools.wraps(fn)
    def inner(*a, **k):
        comp = a[component_arg] if component_arg is not None and len(a) > component_arg else None
        with stage(label, comp):
            return fn(*a, **k)
    setattr(mod, name, inner)

wrap(inputs, "trajectory_input_sets", "record validation trajectory")
wrap(inputs, "calibration_inputs", "record calibration inputs")
wrap(ox, "export_fp32", "export fp32 (torch.onnx)")
wrap(ox, "_calibrate", "calibrate (ORT MinMax)")
orig_q = ox.quantize_static if hasattr(ox, "quantize_static") else None
import onnxruntime.quantization as oq
qs = oq.quantize_static
def qwrap(*a, **k):
    with stage("quantize (quantize_static)"):
        return qs(*a, **k)
oq.quantize_static = qwrap
wrap(ox, "_quantize_dynamic", "quantize (quantize_dynamic)")
wrap(ox, "save_model", "save model")
wrap(validation, "validate_component", "validate", 0)
# pipeline imported these names inside the function from the modules, so module attributes suffice,
# except validate_component which pipeline imports by name at call time from .validation: patched above.
from bksdm_edge.cli import main
with StageLog(show=True) as log:
    try:
        rc = main(args)
    except SystemExit as e:
        rc = e.code
out = log.to_json(); out["exit"] = rc; out["argv"] = args
open(log_path, "w").write(json.dumps(out, indent=1))
print(json.dumps(out)[:2000])
