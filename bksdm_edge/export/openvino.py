"""OpenVINO back-end: IR (``openvino_model.xml`` + ``.bin``) per component, run with the OpenVINO CPU plugin.

Conversion path, measured (tiny U-Net on this 2-core machine, loaded): OpenVINO's PyTorch frontend
(``ov.convert_model(module, example_input=...)``, TorchScript tracing) took 50 s; our TorchScript ONNX export
(the ONNX target's ``export_fp32``) followed by ``ov.convert_model(model.onnx)`` took 13 s, with the same
accuracy (max |diff| 6e-7 vs PyTorch both ways). So the IR is made from the same ONNX graph the ONNX target
validates, with batch/height/width exported as dynamic axes and then reshaped to the static export shape:
the IR declares static shapes (what the CPU plugin compiles fastest and NPUs need), yet keeps its shape
sub-graphs, so optimum-intel's ``OVStableDiffusionPipeline`` can reshape it (it reshapes every model to
dynamic shapes on load, and the U-Net to the CFG batch of 2).

Precisions (NNCF for the int8 ones):
- ``fp32``: float32 IR.
- ``fp16``: float16-compressed weights (``save_model(compress_to_fp16=True)``); the CPU plugin decompresses
  them and computes in f32 (or bf16 with that hint).
- ``int8``: optimum-intel's hybrid recipe: U-Net and VAE fully quantized with ``nncf.quantize`` (post-training,
  calibrated on real pipeline inputs recorded like the ONNX int8 calibration, ``ModelType.TRANSFORMER``);
  the text encoder int8 weight-only (``nncf.compress_weights``). Which ops stay float: see ``INT8_RECIPE``.
- ``int8-weight-only``: every component's weights int8 (``nncf.compress_weights``, INT8_ASYM), float math.

Run-time: ``load_runner(path, threads=, inference_precision=)``: ``f32`` (the default, and what the export
gate validates) or ``bf16`` (OpenVINO's inference-precision hint; on CPUs with AVX512-BF16 or AMX the
plugin then runs convolutions/matmuls in bf16). bf16 is validated beside f32 at export time (a
``RuntimeVariant``). ``generate --inference-precision auto`` times f32 and bf16 on the bundle's U-Net where bf16
passed and the CPU has bf16 units, and runs the faster (``bksdm_edge.runtime_speed``): which one wins depends on
the CPU and the bundle (on an EPYC without AMX the hint speeds an fp32 IR up 1.77x and leaves an int8 IR level).

openvino/nncf are imported inside functions (and openvino is the only run-time dependency): ``generate``
loads this module without torch.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .base import ConvertedModel, ExportError, TensorInfo
from .memory import GIB, MemoryEstimate, PeakModel, check_fits, count_parameters, weight_bytes
from .onnx import INT8_TOLERANCES, OnnxFp32
from .registry import ExportTarget, RuntimeVariant, Tolerance, register_target

MODEL_FILE = "openvino_model.xml"
WEIGHTS_FILE = "openvino_model.bin"
CONFIG_FILE = "config.json"
INFERENCE_PRECISIONS = {"f32": "f32", "bf16": "bf16"}  # our names -> OpenVINO's INFERENCE_PRECISION_HINT
INSTALL_HINT = "pip install 'bksdm-edge[openvino]' (openvino; nncf for int8 exports)"

# The int8 recipe per component (options["quantization"]):
# - "ptq": nncf.quantize of activations and weights (U-Net, VAE). ``attention`` says what happens to
#   attention's activation x activation MatMuls (QK^T, AV): "float" leaves them out of quantization (ignored
#   scope), "int8" quantizes them too. Measured: see docs/openvino.md (int8 recipe).
# - "weights": nncf.compress_weights, int8 weights with float activations (text encoder, int8-weight-only).
INT8_RECIPE = {"attention": "float"}

# Peak memory one conversion adds on top of the built PyTorch module (export/memory.py): the ONNX export, the
# OpenVINO model read from it, NNCF's copies and, for post-training quantization, the statistics runs.
# Fitted above the full-size conversions' peak RSS (export_peak_rss_mb) in benchmarks/results/cpu-engines, whose
# processes also held the teacher the student was built from: SD-v1.4 fp32 7.0 GiB in all (3.2 GiB of weights),
# BK-SDM-Tiny fp32 6.4 GiB and int8 6.5 GiB (teacher 3.2 + Tiny 1.2 GiB of weights), and the whole SD-v1.4 int8
# pipeline export (benchmarks/results/export_time): 14.8 GiB at the U-Net's NNCF quantization, about 14.0 GiB of it
# the U-Net's module and conversion (the text encoder and VAE held beside it); int8's 3.1 x weights puts the U-Net's
# estimate at 14.6 GiB with its module (docs/openvino.md, Memory).
_MEASURED = "benchmarks/results/cpu-engines (export_peak_rss_mb), benchmarks/results/export_time (SD-v1.4 int8)"
MEMORY: dict[str, PeakModel] = {
    "fp32": PeakModel(int(1.0 * GIB), 1.5, source=_MEASURED),
    "fp16": PeakModel(int(1.0 * GIB), 1.5, source=_MEASURED),
    "int8-weight-only": PeakModel(int(1.0 * GIB), 2.0, source=_MEASURED),
    "int8": PeakModel(int(1.5 * GIB), 3.1, source=_MEASURED),
}


def memory_estimate(num_params: int, precision: str) -> MemoryEstimate:
    """What converting a component of ``num_params`` fp32 parameters adds to the process, in labelled parts."""
    model = MEMORY[precision]
    return MemoryEstimate(
        f"OpenVINO {precision} conversion of a {num_params / 1e6:.0f}M-parameter model",
        (("fixed", model.fixed_bytes),
         (f"{model.per_weight_byte:g} x fp32 weights", int(model.per_weight_byte * weight_bytes(num_params)))),
    )


def _memory_kind(precision: str, options: dict[str, Any]) -> str:
    """The ``MEMORY`` entry of a conversion: int8's weight-only components (the text encoder) cost as int8-weight-only."""
    return "int8-weight-only" if precision == "int8" and options.get("quantization") == "weights" else precision


def _ov():
    try:
        import openvino
    except ModuleNotFoundError as err:
        raise ExportError(f"The OpenVINO back-end needs the package 'openvino': {INSTALL_HINT}") from err
    return openvino


# ---------------------------------------------------------------------------------------------
# conversion


def convert(
    module,
    example_inputs: dict[str, Any],
    output_names: list[str] | tuple[str, ...],
    out_dir: str | Path,
    precision: str,
    *,
    calibration: list[dict[str, np.ndarray]] | None = None,
    options: dict[str, Any] | None = None,
) -> ConvertedModel:
    """Convert ``module`` to ``out_dir/openvino_model.xml`` (+ ``.bin`` and the source's ``config.json``).

    Args:
        module: the component wrapper (``nn.Module``) in eval mode.
        example_inputs: input name -> torch tensor; their shapes are the static shapes of the IR.
        output_names: names of the outputs.
        out_dir: component folder (created).
        precision: ``fp32``, ``fp16``, ``int8`` or ``int8-weight-only``.
        calibration: input dicts (numpy) for ``quantization="ptq"``.
        options: ``dynamic_axes`` (keep these axes dynamic in the IR instead of reshaping to the example
            shapes), ``quantization`` ("ptq" | "weights"), ``attention`` ("float" | "int8", ptq only),
            ``memory_limit_bytes`` (instead of the memory available now, for the pre-flight check).
    Raises ``MemoryRefused`` before any work when the estimated peak does not fit.
    """
    ov = _ov()
    if precision not in MEMORY:
        raise ExportError(f"The OpenVINO back-end has no precision {precision!r}")
    from .components import spec_for_inputs, write_source_config
    from .onnx import export_fp32

    options = dict(options or {})
    estimate = check_fits(memory_estimate(count_parameters(module), _memory_kind(precision, options)),
                          limit=options.get("memory_limit_bytes"),
                          override="pass options={'memory_limit_bytes': N} to convert()")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = spec_for_inputs(tuple(example_inputs))
    extra: dict[str, Any] = {"estimated_peak_memory_bytes": estimate,
                             "converted_from": "onnx (torch.onnx TorchScript exporter)",
                             "openvino": ov.get_version().split("-")[0]}
    reshapeable = {k: v for k, v in spec.dynamic_axes.items() if k in example_inputs}
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".work-") as work:
        # 1. The same ONNX graph as the ONNX target, with reshapeable axes.
        onnx_path = export_fp32(module, example_inputs, output_names, Path(work) / "model.onnx",
                                options.get("dynamic_axes") or reshapeable)
        model = ov.convert_model(str(onnx_path))
        # 2. Static shapes unless asked otherwise.
        if not options.get("dynamic_axes"):
            model.reshape({name: list(t.shape) for name, t in example_inputs.items()})
        # 3. Precision.
        if precision.startswith("int8"):
            model = _quantize(model, precision, calibration, options, extra)
        path = out_dir / MODEL_FILE
        ov.save_model(model, str(path), compress_to_fp16=precision == "fp16")
    files = [path, out_dir / WEIGHTS_FILE]
    config = write_source_config(module, out_dir)
    if config is not None:
        files.append(config)
    inputs, outputs = model_io(model)
    if precision == "fp16":
        extra["weights"] = "float16 (decompressed by the CPU plugin)"
    return ConvertedModel(path=path, files=files, inputs=inputs, outputs=outputs, precision=precision, extra=extra)


def attention_ops(model) -> list[str]:
    """Names of attention's activation x activation products: the ``ScaledDotProductAttention`` ops that OpenVINO's
    ONNX frontend fuses from QK^T -> softmax -> AV, and any MatMul left with no constant (weight) input."""
    def constant(output) -> bool:
        node = output.get_node()
        while node.get_type_name() in ("Convert", "Reshape", "Transpose", "Unsqueeze"):
            node = node.input(0).get_source_output().get_node()
        return node.get_type_name() == "Constant"

    return [op.get_friendly_name() for op in model.get_ordered_ops()
            if op.get_type_name() == "ScaledDotProductAttention"
            or (op.get_type_name() == "MatMul" and not any(constant(i.get_source_output()) for i in op.inputs()))]


def _quantize(model, precision: str, calibration, options: dict[str, Any], extra: dict[str, Any]):
    try:
        import nncf  # noqa: F401
    except ModuleNotFoundError as err:
        raise ExportError(f"OpenVINO int8 exports need the package 'nncf': {INSTALL_HINT}") from err
    with _quiet_nncf():
        return _quantize_with_nncf(model, calibration, options, extra)


@contextlib.contextmanager
def _quiet_nncf():
    """NNCF's progress bars (rich, on stdout) and its INFO tables stay off the console: our progress bar says
    which component is being exported; warnings and errors still show."""
    import nncf
    from nncf.common.logging import nncf_logger

    previous = nncf_logger.level
    nncf.set_log_level(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        nncf.set_log_level(previous)


def _quantize_with_nncf(model, calibration, options: dict[str, Any], extra: dict[str, Any]):
    import nncf

    method = options.get("quantization", "weights")
    if method == "weights":
        extra["quantization"] = "weights: nncf.compress_weights INT8_ASYM (per-channel), float activations"
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    if method != "ptq":
        raise ExportError(f"OpenVINO int8 needs options['quantization'] = 'ptq' or 'weights', got {method!r}")
    if not calibration:
        raise ExportError("OpenVINO int8 post-training quantization needs calibration inputs; none were given")
    dtypes = {p.get_any_name(): p.get_element_type().to_dtype() for p in model.inputs}
    samples = [{k: np.asarray(v).astype(dtypes[k]) for k, v in s.items()} for s in calibration]
    attention = options.get("attention", INT8_RECIPE["attention"])
    if attention not in ("float", "int8"):
        raise ExportError(f"options['attention'] must be 'float' or 'int8', got {attention!r}")
    ignored = attention_ops(model) if attention == "float" else []
    quantized = nncf.quantize(
        model, nncf.Dataset(samples), subset_size=len(samples), model_type=nncf.ModelType.TRANSFORMER,
        ignored_scope=nncf.IgnoredScope(names=ignored, validate=False) if ignored else None,
    )
    extra.update(quantization="ptq: nncf.quantize (TRANSFORMER), per-channel int8 weights, calibrated activations",
                 calibration_samples=len(samples), attention=attention, float_attention_ops=len(ignored))
    return quantized


def model_io(model) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """TensorInfo of an OpenVINO model's inputs and outputs (dynamic dims by their ONNX axis names)."""
    def info(port, dynamic_names) -> TensorInfo:
        shape = tuple(d.get_length() if d.is_static else dynamic_names.get(i, "?")
                      for i, d in enumerate(port.get_partial_shape()))
        dtype = np.dtype(port.get_element_type().to_dtype()).name
        return TensorInfo(name=port.get_any_name(), shape=shape, dtype=dtype, layout="NCHW" if len(shape) == 4 else None)

    names = {0: "batch", 2: "height", 3: "width"}
    return [info(p, names) for p in model.inputs], [info(p, names) for p in model.outputs]


# ---------------------------------------------------------------------------------------------
# running


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin has native bf16 kernels here (AVX512-BF16 or AMX-BF16)."""
    ov = _ov()
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def load_runner(converted_or_path: ConvertedModel | str | Path, *, threads: int | None = None,
                inference_precision: str = "f32", profile: bool = False):
    """Compile the IR for the CPU and wrap it as ``feeds dict -> outputs dict``.

    Args:
        threads: CPU threads (``INFERENCE_NUM_THREADS``; None = OpenVINO's default, all cores).
        inference_precision: ``f32`` (default; what the export validated) or ``bf16``. OpenVINO's own default
            on a CPU with bf16 units is bf16, so f32 is set explicitly.
        profile: collect per-node times (``PERF_COUNT``) for ``node_times`` (slightly slower: timing only).
    """
    ov = _ov()
    path = converted_or_path.path if isinstance(converted_or_path, ConvertedModel) else Path(converted_or_path)
    if inference_precision not in INFERENCE_PRECISIONS:
        raise ExportError(f"OpenVINO inference precision {inference_precision!r}: choose from "
                          f"{', '.join(INFERENCE_PRECISIONS)}")
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY",
                              "INFERENCE_PRECISION_HINT": INFERENCE_PRECISIONS[inference_precision]}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if profile:
        config["PERF_COUNT"] = True
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()
    outputs = [(o, o.get_any_name()) for o in compiled.outputs]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = request.infer(feeds)
        return {name: np.array(result[port]) for port, name in outputs}

    run.compiled = compiled  # for callers that want the compiled model (benchmarks: kernels, precision)
    run.request = request  # its profiling info after a call (``node_times``)
    return run


_BLOCK = re.compile(r"(down_blocks|up_blocks)[./](\d+)|(mid_block)")


def node_times(run) -> list[dict[str, Any]]:
    """Per-node times of the last call of a runner loaded with ``profile=True``, slowest first.

    Each entry: ``name``, ``type`` (the executed layer: Convolution, FullyConnected, Subgraph = a fused snippet such
    as attention's MatMul-Softmax-MatMul), ``kernel`` (primitive, with its ISA), ``seconds``, and the
    U-Net ``block`` its name places it in (``down_blocks.0``, ``mid_block``, ..., else ``other``).
    """
    out = []
    for info in run.request.get_profiling_info():
        if info.status != info.Status.EXECUTED:
            continue
        m = _BLOCK.search(info.node_name)
        block = (f"{m.group(1)}.{m.group(2)}" if m.group(1) else m.group(3)) if m else "other"
        out.append({"name": info.node_name, "type": info.node_type, "kernel": info.exec_type,
                    "seconds": info.real_time.total_seconds(), "block": block})
    return sorted(out, key=lambda n: -n["seconds"])


def time_by(nodes: list[dict[str, Any]], key: str) -> dict[str, float]:
    """Sum of ``node_times`` entries' seconds per ``key`` (``type``, ``block``, ``kernel``), largest first."""
    sums: dict[str, float] = {}
    for n in nodes:
        sums[n[key]] = sums.get(n[key], 0.0) + n["seconds"]
    return dict(sorted(sums.items(), key=lambda kv: -kv[1]))


def execution_info(compiled) -> dict[str, Any]:
    """What the CPU plugin actually runs: inference precision, threads, and the kernel (primitive) types.

    Read from the compiled model's execution graph (``get_runtime_model``): each node's ``primitiveType``
    names its implementation and ISA (``brgconv_avx512_amx_I8``, ``jit_avx512_core_bf16``, ``gemm_avx512``...)
    and ``runtimePrecision`` its data type. Returns counts per primitive type and per runtime precision of
    the compute-heavy nodes (Convolution, MatMul/FullyConnected, GroupConvolution).
    """
    runtime = compiled.get_runtime_model()
    heavy = ("Convolution", "MatMul", "FullyConnected", "GroupConvolution", "Deconvolution", "ScaledDotProductAttention")
    kernels: dict[str, int] = {}
    precisions: dict[str, int] = {}
    for op in runtime.get_ops():
        rt = op.get_rt_info()
        value = lambda key: rt[key].astype(str) if key in rt else "?"  # noqa: E731 - OVAny -> str
        layer = value("layerType")
        if layer not in heavy:
            continue
        key = f"{layer}:{value('primitiveType')}"
        kernels[key] = kernels.get(key, 0) + 1
        prec = value("runtimePrecision")
        precisions[prec] = precisions.get(prec, 0) + 1
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    return {
        "inference_precision": hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint),
        "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
        "kernels": dict(sorted(kernels.items(), key=lambda kv: -kv[1])),
        "runtime_precisions": precisions,
    }


# ---------------------------------------------------------------------------------------------
# targets


# bf16 keeps 8 mantissa bits: on the toy and full-size models the U-Net output stays above ~30 dB of its
# f32 result (docs/openvino.md), well below what fp32's allclose gate asks.
BF16_TOLERANCES = {"default": Tolerance(min_psnr=28.0, min_cosine=0.995)}
BF16 = RuntimeVariant(runner_options={"inference_precision": "bf16"}, tolerances=BF16_TOLERANCES,
                      description="OpenVINO bf16 inference precision (convolutions/matmuls in bf16 on "
                                  "AVX512-BF16/AMX CPUs)")


class _OpenVinoTarget(ExportTarget):
    FORMAT = "openvino"
    convert = staticmethod(convert)
    load_runner = staticmethod(load_runner)
    DEFAULT_RUNTIME = "f32"
    RUNTIME_VARIANTS = {"bf16": BF16}

    @classmethod
    def runtime_unavailable(cls) -> str | None:
        try:
            import openvino  # noqa: F401
        except ModuleNotFoundError:
            return f"openvino is not installed: {INSTALL_HINT}"
        return None

    @classmethod
    def runtime_variant_unavailable(cls, variant: str) -> str | None:
        if variant == "bf16" and not cpu_has_bf16():
            return "this CPU has no bf16 units (OpenVINO reports no BF16 capability: no AVX512-BF16 or AMX)"
        return None

    @classmethod
    def memory_estimate(cls, component: str, model, shape, options: dict[str, Any]):
        """The export's pre-flight (``memory.check_export_memory``, before recording inputs): the same estimate
        ``convert`` checks again per component."""
        from .memory import component_weight_bytes

        return memory_estimate(component_weight_bytes(model, component) // 4, _memory_kind(cls.PRECISION, options))

    @classmethod
    def write_layout_files(cls, root: Path, info: dict[str, Any]) -> list[Path]:
        """optimum-intel's OpenVINO diffusion layout: ``model_index.json`` naming its OVModel* pipeline parts."""
        from .bundle import write_model_index

        # optimum-intel's latent-consistency pipeline for a U-Net that embeds the guidance (as the ONNX layout does).
        pipeline = "OVLatentConsistencyModelPipeline" if info.get("guidance_embedding") else "OVStableDiffusionPipeline"
        return [write_model_index(root, info, pipeline,
                                  lambda c: ["optimum", "OVModel" + "".join(p.title() for p in c.split("_"))])]


@register_target
class OpenVinoFp32(_OpenVinoTarget):
    PRECISION = "fp32"
    DESCRIPTION = "float32 IR, f32 inference (bf16 hint validated beside it)"
    DEFAULT = True
    # The IR comes from the ONNX target's graph: the same gates (OpenVINO's fused kernels differ by ~1e-6).
    TOLERANCES = OnnxFp32.TOLERANCES


@register_target
class OpenVinoFp16(_OpenVinoTarget):
    PRECISION = "fp16"
    DESCRIPTION = "float16-compressed weights (half the size), decompressed and computed in f32 (or bf16)"
    TOLERANCES = {"default": Tolerance(min_psnr=40.0, min_cosine=0.9995)}


INT8_BF16 = RuntimeVariant(runner_options={"inference_precision": "bf16"}, tolerances=INT8_TOLERANCES,
                           description=BF16.description + "; int8 kernels unchanged")


@register_target
class OpenVinoInt8(_OpenVinoTarget):
    PRECISION = "int8"
    DESCRIPTION = ("optimum-intel's hybrid int8: U-Net and VAE fully quantized by NNCF post-training quantization "
                   "(per-channel int8 weights, activations calibrated on real pipeline inputs; attention's "
                   "QK^T/AV MatMuls float), text encoder int8 weight-only")
    TOLERANCES = INT8_TOLERANCES
    NEEDS_CALIBRATION = ("unet", "vae_decoder", "vae_encoder")
    OPTIONS = {"default": {"quantization": "ptq"}, "text_encoder": {"quantization": "weights"}}
    RUNTIME_VARIANTS = {"bf16": INT8_BF16}


@register_target
class OpenVinoInt8WeightOnly(_OpenVinoTarget):
    PRECISION = "int8-weight-only"
    DESCRIPTION = "int8 weights (NNCF compress_weights, asymmetric per channel), float activations; no calibration"
    TOLERANCES = {"default": Tolerance(min_psnr=30.0, min_cosine=0.998),
                  "vae_decoder": Tolerance(min_psnr=30.0, min_cosine=0.995)}
    OPTIONS = {"default": {"quantization": "weights"}}
    RUNTIME_VARIANTS = {"bf16": RuntimeVariant(runner_options={"inference_precision": "bf16"},
                                               tolerances=INT8_TOLERANCES, description=BF16.description)}
