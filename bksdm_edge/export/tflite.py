"""TFLite (LiteRT) back-end: litert-torch conversion, ai-edge-quantizer recipes, LiteRT interpreter runner.

Every precision starts from one fp32 conversion of the component wrapper with
litert-torch; the other precisions are ai-edge-quantizer recipes applied to that
fp32 flatbuffer (the same route litert-torch's own ``quant_config`` recipes take,
but done here explicitly so the fp32 model can be freed before quantizing and
static quantization can be calibrated on real pipeline inputs):

- ``fp32``: the converted model as is.
- ``fp16``: weights cast to float16, dequantized to float32 at load (FLOAT_CASTING).
- ``int8``: dynamic-range: int8 channel-wise weights, activations quantized on the fly
  to int8 inside each FULLY_CONNECTED/CONV op (integer compute, float I/O).
- ``int8-weight-only``: int8 weights dequantized before float compute (more accurate,
  not faster; smaller file only).
- ``w8a8``: full-integer static quantization (int8 weights and activations),
  calibrated on ``calibration`` (a list of input dicts from a real pipeline run).
  Float inputs and outputs become int8; their scale and zero point are recorded in
  ``TensorInfo.quantization`` (``tensor_io`` (de)quantizes with them; the runner
  itself feeds and returns the model's raw tensors).

Input names are the wrapper's argument names (the module is traced with keyword
arguments) and output names come from the keys of a returned dict, so the
signature reads ``sample, timestep, encoder_hidden_states -> out_sample``, not
``args_0.. -> output_0``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .base import ConvertedModel, ExportError, Runner, TensorInfo, release_module
from .memory import GIB, MemoryEstimate, PeakModel, available_memory, check_fits, count_parameters, weight_bytes
from .registry import ExportTarget, Tolerance, register_target
from .stages import stage

PRECISIONS = ("fp32", "fp16", "int8", "int8-weight-only", "w8a8")
MODEL_FILE = "model.tflite"
FLATBUFFER_LIMIT = 2**31  # flatbuffers address 32-bit signed offsets

# Memory one conversion adds on top of the already-built PyTorch module, as measured on the
# SD-v1.4-size U-Nets (benchmarks/results/tflite_conversion, peak RSS sampled during convert
# minus RSS before it): 1.7-2.6x the fp32 weight bytes for fp32/fp16/int8 (teacher fp16: +7.0 GiB
# for 3.2 GiB of weights) and 3.7-4.0x for w8a8 (calibration runs the fp32 model in the
# interpreter beside the quantizer's copies). The estimate is a fixed overhead plus a multiple
# above every measurement: a refused export costs a message, an OOM kill costs the machine.
_MEASURED = "benchmarks/results/tflite_conversion"
MEMORY: dict[str, PeakModel] = {
    **{p: PeakModel(int(1.5 * GIB), 3.5, source=_MEASURED) for p in ("fp32", "fp16", "int8", "int8-weight-only")},
    "w8a8": PeakModel(int(1.5 * GIB), 5.0, source=_MEASURED),
}
MEMORY_BASE_BYTES = MEMORY["fp32"].fixed_bytes
MEMORY_PER_PARAM_BYTE = {p: m.per_weight_byte for p, m in MEMORY.items()}
LIGHTWEIGHT_FACTOR = 1.0  # measured: see docs/tflite.md (lightweight_conversion did not lower the peak enough to count on)
# lightweight_conversion did not lower the peak (BK-SDM-Tiny fp16: 5.23 GiB with it, 4.85 without) and
# its int8 output failed to quantize at full size; off unless options["lightweight"] asks for it.
LIGHTWEIGHT_MIN_PARAMS = 10**18


def memory_estimate(num_params: int, precision: str, lightweight: bool = False) -> MemoryEstimate:
    """What converting a model with ``num_params`` fp32 parameters adds to the process, in labelled parts."""
    model = MEMORY[precision]
    factor = model.per_weight_byte * (LIGHTWEIGHT_FACTOR if lightweight else 1.0)
    return MemoryEstimate(
        f"TFLite {precision} conversion of a {num_params / 1e6:.0f}M-parameter model",
        (("fixed", model.fixed_bytes), (f"{factor:g} x fp32 weights", int(factor * weight_bytes(num_params)))),
    )


def estimate_conversion_memory(num_params: int, precision: str, lightweight: bool = False) -> int:
    """Estimated peak RSS in bytes of converting a model with ``num_params`` fp32 parameters."""
    return memory_estimate(num_params, precision, lightweight).total


def check_memory(num_params: int, precision: str, lightweight: bool, limit: int | None = None) -> int:
    """Raise ``MemoryRefused`` before converting when the estimated peak exceeds the memory at hand."""
    return check_fits(memory_estimate(num_params, precision, lightweight), limit=limit,
                      override="pass options={'memory_limit_bytes': N} to convert()")


class _NamedIO:
    """Wrap a component so litert-torch names inputs by keyword and outputs by dict key."""

    def __new__(cls, module, output_names: tuple[str, ...]):
        import torch

        class NamedIO(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = module

            def forward(self, **inputs):
                out = self.inner(**inputs)
                outs = out if isinstance(out, (tuple, list)) else (out,)
                return dict(zip(output_names, outs))

        return NamedIO().eval()


def _to_torch_inputs(example_inputs: Mapping[str, Any]):
    import torch

    return {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v)) for k, v in example_inputs.items()}


def _convert_fp32(module, example_inputs, output_names, signature: str, path: Path, lightweight: bool) -> None:
    """Trace ``module`` with litert-torch and write the fp32 flatbuffer to ``path``."""
    import litert_torch
    import torch

    named = _NamedIO(module, tuple(output_names))
    with torch.no_grad():
        edge = litert_torch.signature(signature, named, sample_kwargs=_to_torch_inputs(example_inputs)).convert(
            lightweight_conversion=lightweight
        )
    try:
        edge.export(str(path))
    except Exception as err:  # the flatbuffer writer reports size overflows as generic errors
        raise ExportError(
            f"Writing the fp32 TFLite flatbuffer failed ({type(err).__name__}: {err}). "
            f"If the model's fp32 weights exceed 2 GiB this is the flatbuffer size limit: export fp16/int8 instead, "
            "or a smaller student."
        ) from err
    del edge, named
    gc.collect()


def _fp16_recipe():
    from ai_edge_quantizer import qtyping, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    rm = recipe_manager.RecipeManager()
    rm.add_quantization_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        op_config=qtyping.OpQuantizationConfig(
            weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
            compute_precision=qtyping.ComputePrecision.FLOAT,
            explicit_dequantize=True,
        ),
        algorithm_key=AlgorithmName.FLOAT_CASTING,
    )
    return rm.get_quantization_recipe()


def quantization_recipe(precision: str):
    """The ai-edge-quantizer recipe for a precision (None for fp32)."""
    from ai_edge_quantizer import recipe

    recipes = {
        "fp32": lambda: None,
        "fp16": _fp16_recipe,
        "int8": recipe.dynamic_wi8_afp32,
        "int8-weight-only": recipe.weight_only_wi8_afp32,
        "w8a8": recipe.static_wi8_ai8,
    }
    if precision not in recipes:
        raise ExportError(f"TFLite precision {precision!r} is not supported; choose one of {', '.join(PRECISIONS)}.")
    return recipes[precision]()


def _calibration_feed(calibration: Iterable[Mapping[str, Any]], input_details: dict[str, dict]) -> list[dict]:
    feed = []
    for sample in calibration:
        missing = set(input_details) - set(sample)
        if missing:
            raise ExportError(f"Calibration sample lacks inputs {sorted(missing)}; it has {sorted(sample)}.")
        feed.append({
            name: np.asarray(_numpy(sample[name]), dtype=d["dtype"]).reshape(d["shape"])
            for name, d in input_details.items()
        })
    return feed


def _numpy(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _union_min_max(qsv: dict, new: dict) -> dict:
    return {**qsv, "min": np.minimum(qsv["min"], new["min"]), "max": np.maximum(qsv["max"], new["max"])}


def _calibrate(q, signature: str, calibration, calibration_ranges: Mapping[str, tuple[float, float]]) -> dict:
    """Activation ranges over ALL calibration samples (plus ``_range_samples`` for ``calibration_ranges``).

    ``Quantizer.calibrate`` folds samples in with a 0.95 moving average, so the first sample
    dominates: a trajectory starting at timestep 1 left the U-Net's timestep input a range of
    0..119 (every later timestep clipped). The union of per-sample min/max is what a static
    int8 model needs: every value seen in a real run must be representable.

    The profiler-based calibrator tracks min/max inside the interpreter as it runs; the default
    one keeps every intermediate tensor of the run alive for Python to read, which OOM-killed the
    full-size BK-SDM-Tiny U-Net at 512 px at 23 GB.
    """
    from ai_edge_quantizer import calibrator

    from .stages import stage

    calib = calibrator.Calibrator(q._float_model_buffer, num_threads=os.cpu_count() or 1,
                                  mode=calibrator.CalibrationMode.CALIBRATION_PROFILER_BASED,
                                  qsv_update_func=_union_min_max)
    # The calibrator's interpreter gives the input names/dtypes/shapes (no second copy of the model).
    details = calib._tfl_interpreter.get_signature_runner(signature).get_input_details()
    feed = _calibration_feed(calibration, details)
    feed += _range_samples(feed, calibration_ranges)
    with stage("calibrate", total=len(feed), detail=f"{len(feed)} samples") as progress:
        calib.calibrate({signature: _ReportingFeed(feed, progress.update)}, q._recipe_manager)
    return calib.get_model_qsvs()


class _ReportingFeed(list):
    """Calibration samples that report each one done to ``on_sample``.

    ``Calibrator.calibrate`` iterates its dataset twice: once to count operations, then to run
    each sample; the second pass reports.
    """

    def __init__(self, samples, on_sample):
        super().__init__(samples)
        self._on_sample, self._passes = on_sample, 0

    def __iter__(self):
        self._passes += 1
        for sample in super().__iter__():
            yield sample
            if self._passes > 1:
                self._on_sample()


def _range_samples(feed: list[dict], ranges: Mapping[str, tuple[float, float]]) -> list[dict]:
    """Copies of the first calibration sample with an input set to each end of its declared range.

    A pipeline run of a few steps sees only a few timesteps (4 steps: 1..751), and a static int8
    input clips everything outside what calibration saw; a 25-step generation then feeds 981.
    """
    extra = []
    for name, bounds in ranges.items():
        for value in bounds:
            sample = dict(feed[0])
            sample[name] = np.full_like(sample[name], value)
            extra.append(sample)
    return extra


# ai-edge-quantizer 0.10.0 quantizes a weight over 32 MiB in chunks after flattening it to
# [-1, last dim], which only broadcasts when the scales run along the last dimension. A conv
# weight (OHWI, per-output-channel scales on dim 0) over 32 MiB -- every 1280x1280x3x3 conv of the
# SD U-Net -- then fails with "input operand has more dimensions than allowed by the axis
# remapping". Slicing such a tensor along its leading dimension gives pieces that take the
# library's own unchunked path; per-channel scales on dim 0 (or one per-tensor scale) make the
# pieces independent, so the result is identical to quantizing the whole tensor.
_QUANTIZER_CHUNK_BYTES = 32 * 1024 * 1024


@contextlib.contextmanager
def _quantize_large_conv_weights():
    from ai_edge_quantizer.algorithms.uniform_quantize import uniform_quantize_tensor as uqt

    original = uqt.uniform_quantize

    def sliced(tensor_data, quantization_params, is_blockwise_quant=False):
        if (is_blockwise_quant or tensor_data.ndim <= 2 or tensor_data.nbytes <= _QUANTIZER_CHUNK_BYTES):
            return original(tensor_data, quantization_params, is_blockwise_quant)
        params = uqt.fix_quantization_params_rank(tensor_data, quantization_params)
        scale, zero_point = np.asarray(params.scale), np.asarray(params.zero_point)
        if any(n != 1 for n in scale.shape[1:]) or any(n != 1 for n in zero_point.shape[1:]):
            return original(tensor_data, quantization_params, is_blockwise_quant)  # not along dim 0
        rows = max(1, _QUANTIZER_CHUNK_BYTES // (tensor_data[0].nbytes or 1))
        pieces = []
        for start in range(0, tensor_data.shape[0], rows):
            stop = start + rows
            piece = dataclasses.replace(
                params,
                scale=scale[start:stop] if scale.shape[0] > 1 else scale,
                zero_point=zero_point[start:stop] if zero_point.shape[0] > 1 else zero_point,
            )
            pieces.append(original(tensor_data[start:stop], piece, False))
        return np.concatenate(pieces, axis=0)

    uqt.uniform_quantize = sliced
    try:
        yield
    finally:
        uqt.uniform_quantize = original


def _quantize(fp32_path: Path, out_path: Path, precision: str, signature: str, calibration,
              calibration_ranges=None) -> None:
    from ai_edge_quantizer import quantizer

    q = quantizer.Quantizer(str(fp32_path), quantization_recipe(precision))
    result = None
    if q.need_calibration:
        if not calibration:
            raise ExportError(
                "w8a8 (full-integer static) quantization needs calibration inputs: a list of input dicts "
                "gathered from a real pipeline run (the export command collects them from its prompt list)."
            )
        result = _calibrate(q, signature, calibration, calibration_ranges or {})
    # Serializing to a path lets the quantizer write buffers over 2 GiB as offset buffers
    # and skip a second in-memory copy of the model.
    with _quantize_large_conv_weights(), stage("quantize", detail=precision):
        q.quantize(result, serialize_to_path=str(out_path), enable_progress_report=False)
    del q, result
    gc.collect()


def _only_signature(interpreter_or_path) -> str:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = interpreter_or_path
    if not isinstance(interpreter, Interpreter):
        interpreter = Interpreter(model_path=str(interpreter_or_path))
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        raise ExportError(f"expected one signature in the .tflite file, found {sorted(signatures)}")
    return next(iter(signatures))


def _signature_runner(path: Path | str, signature: str | None = None, threads: int | None = None):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count() or 1)
    return interpreter.get_signature_runner(signature or _only_signature(interpreter))


def _tensor_info(name: str, detail: dict) -> TensorInfo:
    shape = tuple(int(s) for s in detail["shape"])
    dtype = np.dtype(detail["dtype"]).name
    scale, zero_point = detail["quantization"]
    quant = None
    if np.issubdtype(np.dtype(detail["dtype"]), np.integer) and scale:
        quant = {"scale": float(scale), "zero_point": int(zero_point), "dtype": dtype}
    return TensorInfo(name, shape, dtype, "NCHW" if len(shape) == 4 else None, quant)


def describe(path: Path | str, input_order: Iterable[str] | None = None, output_order: Iterable[str] | None = None):
    """(signature, inputs, outputs) of a .tflite file, as TensorInfo lists, in the given name order."""
    runner = _signature_runner(path, threads=1)
    ins, outs = runner.get_input_details(), runner.get_output_details()
    input_order = list(input_order or sorted(ins, key=lambda n: ins[n]["index"]))
    output_order = list(output_order or sorted(outs, key=lambda n: outs[n]["index"]))
    return (
        [_tensor_info(n, ins[n]) for n in input_order],
        [_tensor_info(n, outs[n]) for n in output_order],
    )


def convert(
    module,
    example_inputs: Mapping[str, Any],
    output_names,
    out_dir,
    precision: str,
    *,
    calibration: list[Mapping[str, Any]] | None = None,
    options: Mapping[str, Any] | None = None,
) -> ConvertedModel:
    """Convert one component wrapper to ``out_dir/model.tflite`` at ``precision``.

    Args:
        module: the component wrapper (``components.COMPONENTS[name].module(model)``), in eval mode.
        example_inputs: {input name: tensor} used to trace the module; fixes the static shapes.
        output_names: names of the module's outputs, in order.
        out_dir: folder to write ``model.tflite`` into (created if missing).
        precision: fp32 | fp16 | int8 | int8-weight-only | w8a8.
        calibration: input dicts from a real pipeline run (required for w8a8).
        options: ``recipe`` (a precision to use instead of ``precision``), ``signature`` (default: out_dir's
            name), ``calibration_ranges`` ({input: (low, high)} that w8a8 must cover beyond the calibration
            samples), ``fp32_tflite`` (an fp32 .tflite of this same
            module to quantize instead of converting again), ``lightweight`` (litert-torch lightweight_conversion; default on above 100M params),
            ``memory_limit_bytes`` (override the available-memory check), ``verbose`` (litert progress),
            ``release_module`` (free the module's weights once converted to fp32: ``base.release_module``).
    """
    import litert_torch

    options = dict(options or {})
    # A target may quantize one component with another recipe (w8a8 keeps the text encoder dynamic int8).
    precision = options.get("recipe", precision)
    if precision not in PRECISIONS:
        raise ExportError(f"TFLite precision {precision!r} is not supported; choose one of {', '.join(PRECISIONS)}.")
    if options.get("dynamic_axes"):
        raise ExportError("TFLite bundles have static shapes (what mobile delegates and NPUs need); drop --dynamic "
                          "and pass the --height/--width/--batch to export for.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    signature = options.get("signature") or out_dir.name.replace("-", "_") or "serving_default"
    litert_torch.config.show_progress = bool(options.get("verbose", False))

    # 1. Refuse early, with numbers, instead of being OOM-killed half-way.
    num_params = count_parameters(module)
    lightweight = bool(options.get("lightweight", num_params >= LIGHTWEIGHT_MIN_PARAMS))
    estimate = check_memory(num_params, precision, lightweight, options.get("memory_limit_bytes"))

    # 2. fp32 conversion; quantized precisions keep it only as a temporary input.
    path = out_dir / MODEL_FILE
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".fp32-") as tmp:
        fp32_path = path if precision == "fp32" else Path(tmp) / MODEL_FILE
        if options.get("fp32_tflite"):
            fp32_path = Path(options["fp32_tflite"])
            signature = _only_signature(fp32_path)
            if precision == "fp32":
                path.write_bytes(fp32_path.read_bytes())
        else:
            with stage("convert fp32", detail="litert-torch"):
                _convert_fp32(module, example_inputs, output_names, signature, fp32_path, lightweight)
        if options.get("release_module"):
            release_module(module)
        t_convert = time.perf_counter() - t0
        fp32_size = fp32_path.stat().st_size
        # 3. Quantize the fp32 flatbuffer.
        if precision != "fp32":
            _quantize(fp32_path, path, precision, signature, calibration, options.get("calibration_ranges"))
    size = path.stat().st_size

    inputs, outputs = describe(path, list(example_inputs), list(output_names))
    extra = {
        "signature": signature,
        "runtime": "ai-edge-litert",
        "converter": f"litert-torch {litert_torch.__version__}",
        "weights": {"fp32": "float32", "fp16": "float16"}.get(precision, "int8"),
        "activations": "int8" if precision == "w8a8" else "float32",
        "parameters": num_params,
        "lightweight_conversion": lightweight,
        "estimated_peak_memory_bytes": estimate,
        "fp32_flatbuffer_bytes": fp32_size,
        "file_bytes": size,
        "convert_seconds": round(t_convert, 2),
        "total_seconds": round(time.perf_counter() - t0, 2),
    }
    if precision == "w8a8":
        extra["calibration_samples"] = len(calibration or ())
    return ConvertedModel(path=path, files=[path], inputs=inputs, outputs=outputs, precision=precision, extra=extra)


def load_runner(converted_or_path: ConvertedModel | Path | str, *, threads: int | None = None) -> Runner:
    """A callable {input name: array} -> {output name: array} over the LiteRT interpreter.

    Runs with the XNNPACK CPU delegate (the interpreter's default) on ``threads`` threads
    (default: all cores). Tensors are the model's own: w8a8 inputs/outputs are int8, to be
    (de)quantized with the manifest's scale/zero point (``tensor_io`` does that).
    """
    path = converted_or_path.path if isinstance(converted_or_path, ConvertedModel) else Path(converted_or_path)
    if path.is_dir():
        path = path / MODEL_FILE
    runner = _signature_runner(path, threads=threads)
    ins = runner.get_input_details()

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = set(ins) - set(feeds)
        if missing:
            raise ExportError(f"Missing inputs {sorted(missing)} for {path}; it takes {sorted(ins)}.")
        return runner(**{name: np.asarray(feeds[name], dtype=d["dtype"]) for name, d in ins.items()})

    return run


# ---------------------------------------------------------------------------------------------
# registered targets


class _TFLiteTarget(ExportTarget):
    FORMAT = "tflite"
    RELEASES_MODULE = True
    DYNAMIC_SHAPES = False
    convert = staticmethod(convert)
    load_runner = staticmethod(load_runner)

    @classmethod
    def memory_estimate(cls, component: str, model, shape, options: dict[str, Any]) -> MemoryEstimate:
        from .memory import component_weight_bytes

        num_params = component_weight_bytes(model, component) // 4
        lightweight = bool(options.get("lightweight", num_params >= LIGHTWEIGHT_MIN_PARAMS))
        return memory_estimate(num_params, cls.PRECISION, lightweight)

    @classmethod
    def runtime_unavailable(cls) -> str | None:
        try:
            import ai_edge_litert.interpreter  # noqa: F401
        except ImportError:
            return "ai-edge-litert is not installed (pip install ai-edge-litert)"
        return None


# fp32 through XNNPACK differs from PyTorch by ~1e-6 on toy and full-size models.
@register_target
class TFLiteFp32(_TFLiteTarget):
    PRECISION = "fp32"
    DEFAULT = True
    DESCRIPTION = "float32 reference (over 2 GiB of weights, e.g. the SD-v1.4 U-Net: prefer fp16/int8)"
    TOLERANCES = {"default": Tolerance(atol=1e-4, rtol=1e-3), "vae_decoder": Tolerance(atol=1e-3, rtol=1e-3),
                  "vae_encoder": Tolerance(atol=1e-3, rtol=1e-3)}


@register_target
class TFLiteFp16(_TFLiteTarget):
    PRECISION = "fp16"
    DESCRIPTION = "float16 weights (half the size), float32 compute and I/O"
    TOLERANCES = {"default": Tolerance(min_psnr=40.0, min_cosine=0.9995)}


@register_target
class TFLiteInt8(_TFLiteTarget):
    PRECISION = "int8"
    DESCRIPTION = "dynamic-range int8: int8 per-channel weights, activations quantized on the fly, float I/O"
    TOLERANCES = {"default": Tolerance(min_psnr=20.0, min_cosine=0.99),
                  "vae_decoder": Tolerance(min_psnr=20.0, min_cosine=0.97)}


@register_target
class TFLiteInt8WeightOnly(_TFLiteTarget):
    PRECISION = "int8-weight-only"
    DESCRIPTION = "int8 per-channel weights dequantized to float32 before each op (size only; float compute)"
    TOLERANCES = {"default": Tolerance(min_psnr=25.0, min_cosine=0.995)}


@register_target
class TFLiteW8A8(_TFLiteTarget):
    PRECISION = "w8a8"
    DESCRIPTION = ("full-integer static int8 U-Net and VAE (weights and activations, calibrated on real pipeline "
                   "inputs; int8 I/O with scale/zero point in the manifest); dynamic-range int8 text encoder")
    # Measured on the random-weight toy pipeline (the hardest case: no structure for the ranges to
    # fit): U-Net cosine 0.983-0.996 (PSNR 25-31 dB), VAE encoder 0.970-0.996; the decoder's seeded
    # inputs (N(0,1)/0.18215) reach beyond the ranges calibrated on real latents and are clipped
    # (cosine 0.87-0.90, 22 dB) while its real-trajectory input scores 0.996 (35 dB). Broken
    # exports (layout, names, ranges) score near 0.
    TOLERANCES = {"default": Tolerance(min_psnr=17.0, min_cosine=0.95),
                  "vae_decoder": Tolerance(min_psnr=18.0, min_cosine=0.85),
                  "text_encoder": Tolerance(min_psnr=20.0, min_cosine=0.99)}
    NEEDS_CALIBRATION = ("unet", "vae_decoder", "vae_encoder")
    # Full-integer CLIP loses too much (cosine 0.65-0.93 vs PyTorch on tiny-sd, no better with int16
    # activations); it runs once per image, so its speed hardly matters: keep it dynamic-range int8.
    OPTIONS = {"text_encoder": {"recipe": "int8"},
               # The scheduler may call the U-Net at any training timestep, whatever calibration saw.
               "unet": {"calibration_ranges": {"timestep": (0.0, 999.0)}}}
