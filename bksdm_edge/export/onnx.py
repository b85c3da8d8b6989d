"""ONNX back-end: fp32, fp16 and int8 (dynamic and static QDQ) exports, run with onnxruntime.

fp32 uses torch's TorchScript-based exporter (``dynamo=False``): with torch 2.13 it
still exists, handles the diffusers modules, and on the toy U-Net takes ~15 s where
the dynamo exporter takes ~50 s and logs opset-conversion failures (``Pad``).
Opset 17 (first with LayerNormalization). Models above ~1.9 GB of weights are saved
with ONNX external data (``model.onnx_data``), protobuf's limit being 2 GiB.

torch is imported inside the conversion functions only: ``load_runner`` must work in
a process without PyTorch (``bksdm-edge generate``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .base import ConvertedModel, ExportError, TensorInfo, release_module
from .memory import GIB, PeakModel, peak_estimate
from .registry import ExportTarget, Tolerance, register_target
from .request import BATCH_AXIS

OPSET = 17
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx_data"
EXTERNAL_DATA_THRESHOLD = 1_900_000_000  # bytes of weights; protobuf refuses messages over 2 GiB

# Ops whose fp16 versions overflow or lose too much: softmax's exp, the normalisation
# statistics (sum of squares), pow/reduce, and the sinusoidal timestep embedding
# (sin/cos of arguments up to ~1000 are meaningless in fp16).
FP16_KEEP_FP32_OPS = (
    "Softmax", "LayerNormalization", "GroupNormalization", "InstanceNormalization",
    "Pow", "ReduceMean", "ReduceSum", "ReduceSumSquare", "Sqrt", "Exp", "Sin", "Cos", "Erf",
)


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
    """Export ``module`` to ``out_dir/model.onnx`` at ``precision``.

    Args:
        module: the component wrapper (``nn.Module``) in eval mode.
        example_inputs: input name -> torch tensor, in the module's argument order.
        output_names: names given to the graph outputs.
        out_dir: component folder (created).
        precision: ``fp32``, ``fp16`` or ``int8*``; int8 needs ``options["quantization"]``.
        calibration: input dicts (numpy) for static quantization.
        options: ``dynamic_axes`` ({input: {axis: name}}), ``io_dtype`` ("fp32"|"fp16", fp16 only),
            ``quantization`` ("dynamic"|"static"), ``op_types`` (ops to quantize), ``matmuls``
            ("all" | "projections": only MatMuls with a constant weight),
            ``external_data`` (None = automatic above 1.9 GB), ``release_module`` (free the module's
            weights once traced: ``base.release_module``).
    """
    import onnx

    from .stages import stage
    from .components import write_source_config

    options = dict(options or {})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".work-") as work:
        work = Path(work)
        with stage("export fp32", detail="torch.onnx"):
            fp32_path = export_fp32(module, example_inputs, output_names, work / "fp32.onnx",
                                    options.get("dynamic_axes"))
        if options.get("release_module"):
            release_module(module)
        extra: dict[str, Any] = {"opset": OPSET, "exporter": "torch.onnx (TorchScript)"}
        if precision == "fp32":
            model = onnx.load(str(fp32_path))
        elif precision == "fp16":
            model = _to_fp16(onnx.load(str(fp32_path)), options.get("io_dtype", "fp32"))
            extra.update(io_dtype=options.get("io_dtype", "fp32"), fp32_ops=list(FP16_KEEP_FP32_OPS))
        elif precision.startswith("int8"):
            method = options.get("quantization")
            q_path = work / "int8.onnx"
            if method == "dynamic":
                with stage("quantize", detail="dynamic"):
                    _quantize_dynamic(fp32_path, q_path, options)
            elif method == "static":
                if not calibration:
                    raise ExportError("static int8 quantization needs calibration inputs; none were given")
                _quantize_static(fp32_path, q_path, calibration, options)
                extra["calibration_samples"] = len(calibration)
            else:
                raise ExportError(f"int8 needs options['quantization'] = 'dynamic' or 'static', got {method!r}")
            model = onnx.load(str(q_path))
            extra["quantization"] = method
        else:
            raise ExportError(f"The ONNX back-end has no precision {precision!r}")
        files = save_model(model, out_dir / MODEL_FILE, options.get("external_data"))
    # optimum's layout: each component folder holds the source model's config.json beside model.onnx.
    config = write_source_config(module, out_dir)
    files += [config] if config else []
    extra["external_data"] = any(f.name == DATA_FILE for f in files)
    inputs, outputs = graph_io(model)
    return ConvertedModel(path=out_dir / MODEL_FILE, files=files, inputs=inputs, outputs=outputs,
                          precision=precision, extra=extra)


def export_fp32(module, example_inputs, output_names, path: Path, dynamic_axes=None) -> Path:
    """torch.onnx.export of a component wrapper at fp32 (TorchScript exporter, opset 17)."""
    import warnings

    import torch

    # Tracing records Python branches on shapes as constants and warns for each; the export is traced at the
    # bundle's fixed shapes and validated against PyTorch afterwards, so the warnings are noise (as in coreml).
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            tuple(example_inputs.values()),
            str(path),
            input_names=list(example_inputs),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes or None,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


def _weights_bytes(model) -> int:
    from onnx.external_data_helper import uses_external_data

    total = 0
    for t in model.graph.initializer:
        total += int(np.prod(t.dims)) * 4 if uses_external_data(t) else len(t.raw_data) or int(np.prod(t.dims)) * 4
    return total


def save_model(model, path: Path, external_data: bool | None = None) -> list[Path]:
    """Save ``model``; weights go to ``model.onnx_data`` beside it when large (or when asked)."""
    import onnx

    if external_data is None:
        external_data = _weights_bytes(model) > EXTERNAL_DATA_THRESHOLD
    if external_data:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=DATA_FILE, size_threshold=1024)
        return [path, path.parent / DATA_FILE]
    onnx.save_model(model, str(path))
    return [path]


def graph_io(model) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """TensorInfo of the graph's inputs and outputs (dynamic dims by name)."""
    from onnx import helper

    def info(v) -> TensorInfo:
        t = v.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).name
        return TensorInfo(name=v.name, shape=shape, dtype=dtype, layout="NCHW" if len(shape) == 4 else None)

    return [info(v) for v in model.graph.input], [info(v) for v in model.graph.output]


def _to_fp16(model, io_dtype: str):
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    return convert_float_to_float16(
        model,
        keep_io_types=io_dtype == "fp32",
        op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FP16_KEEP_FP32_OPS),
        # onnx's shape inference refuses protos over 2 GiB; the converter then works without it.
        disable_shape_infer=_weights_bytes(model) > EXTERNAL_DATA_THRESHOLD,
    )


def _quantize_dynamic(src: Path, dst: Path, options: dict[str, Any]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # ORT's CPU ConvInteger kernel takes uint8 weights only; int8 would fail at session creation.
    quantize_dynamic(
        str(src), str(dst),
        op_types_to_quantize=options.get("op_types", ["MatMul", "Gemm", "Conv"]),
        per_channel=options.get("per_channel", False),
        weight_type=QuantType.QUInt8,
        use_external_data_format=_is_large(src),
    )


def _nodes_to_quantize(model, op_types: list[str], matmuls: str, float_io: bool = False) -> list[str] | None:
    """Node names to quantize, or None for every node of ``op_types``.

    ``matmuls == "projections"`` keeps only the MatMuls whose second input is a
    constant weight (the linear projections: to_q/k/v/out, feed-forward, proj_in/out) and
    leaves the activation x activation MatMuls of attention (QK^T, AV over 4,096 tokens at
    64x64) float, where Q/DQ over the attention probabilities costs more than int8 saves.

    ``float_io`` leaves float the nodes that read a graph input (directly or through a Cast) or
    write a graph output: the U-Net's conv_in and conv_out and the cross-attention to_k/to_v that
    read the text embeddings. Their input ranges are set by the caller (latents whose scale drifts
    along a trajectory, any prompt's embeddings), so static ranges fit them worst, and they are a
    small share of the compute (conv_in/conv_out: 4 channels on one side; to_k/to_v: 77 tokens).
    """
    if matmuls not in ("all", "projections"):
        raise ExportError(f"options['matmuls'] must be 'all' or 'projections', got {matmuls!r}")
    if matmuls == "all" and not float_io:
        return None
    weights = {i.name for i in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    casts = {n.output[0] for n in model.graph.node if n.op_type in ("Cast", "Identity") and n.input[0] in graph_inputs}
    graph_outputs = {o.name for o in model.graph.output}

    def at_io(node) -> bool:
        return bool(set(node.input) & (graph_inputs | casts) or set(node.output) & graph_outputs)

    return [n.name for n in model.graph.node
            if n.op_type in op_types and (matmuls == "all" or n.op_type != "MatMul" or n.input[1] in weights)
            and not (float_io and at_io(n))]


def _calibrate(src: Path, op_types: list[str], nodes: list[str] | None, calibration, dtypes, cache: Path,
               work: Path, optimize: bool = False) -> None:
    """MinMax ranges (union over every sample) of the inputs/outputs of the nodes to quantize, to ``cache``.

    Our own MinMax pass instead of onnxruntime's ``MinMaxCalibrater``, for memory and time:

    - ORT's calibrator keeps the whole model (weights included) in a Python protobuf while its
      session holds a second copy, and its session keeps a memory arena grown to the largest sum of
      live tensors of the unoptimised graph (the U-Net's unfused 8x4096x4096 attention scores): 12.4 GB
      resident for the full-size BK-SDM-Tiny U-Net. Here the weights move to an external-data file
      once, the graph is augmented without them, and the session (no arena) is the only copy.
    - Only the tensors of ``nodes`` (default: every ``op_types`` node) are reduced; ORT's calibrator
      also reduces the attention QK^T/AV MatMuls' 8x4096x4096 tensors that the recipe leaves float.

    Ranges and cache format are the calibrator's (``quantize_static`` reads them back; tested equal).
    ``optimize`` runs the calibration session with ORT's graph optimisations (the reduced tensors are
    graph outputs, so no fusion can remove them).
    """
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData, save_tensors_data

    from .stages import stage

    # 1. The graph without its weights (moved to an external-data file in ``work`` if they are inline).
    graph_path = src
    if not _uses_external_data(src):
        model = onnx.load(str(src))
        graph_path = work / "calibration.onnx"
        onnx.save_model(model, str(graph_path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="calibration.onnx_data", size_threshold=1024)
        del model
    model = onnx.shape_inference.infer_shapes(onnx.load(str(graph_path), load_external_data=False))

    # 2. One ReduceMin and one ReduceMax output per float tensor entering or leaving a node to quantize.
    wanted = set(nodes) if nodes is not None else None
    initializers = {i.name for i in model.graph.initializer}
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input,
                                                           *model.graph.output)}
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    tensors = sorted({t for n in model.graph.node if n.op_type in op_types and (wanted is None or n.name in wanted)
                      for t in (*n.input, *n.output) if t and t not in initializers and types.get(t) in floats})
    reduced = []
    for i, t in enumerate(tensors):
        for op in ("ReduceMin", "ReduceMax"):
            out = f"calib_{op}_{i}"
            model.graph.node.append(onnx.helper.make_node(op, [t], [out], keepdims=0, name=out))
            model.graph.output.append(onnx.helper.make_tensor_value_info(out, types[t], []))
            reduced.append(out)
    augmented = graph_path.parent / "augmented.onnx"
    onnx.save_model(model, str(augmented))  # external data stays where it is (same folder)
    del model

    # 3. Run every sample; keep the union of the per-sample ranges.
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.enable_cpu_mem_arena = False
    so.log_severity_level = 3
    session = ort.InferenceSession(str(augmented), so, providers=["CPUExecutionProvider"])
    low = np.full(len(tensors), np.inf)
    high = np.full(len(tensors), -np.inf)
    with stage("calibrate", total=len(calibration), detail=f"{len(calibration)} samples, {len(tensors)} tensors") as bar:
        for sample in calibration:
            feeds = {k: np.asarray(v).astype(dtypes[k]) for k, v in sample.items()}
            values = session.run(reduced, feeds)
            low = np.minimum(low, np.asarray(values[0::2], dtype=np.float64))
            high = np.maximum(high, np.asarray(values[1::2], dtype=np.float64))
            bar.update()
    del session
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, {
        t: TensorData(lowest=np.array([lo], dtype=np.float32), highest=np.array([hi], dtype=np.float32))
        for t, lo, hi in zip(tensors, low, high)}), cache)


def _uses_external_data(path: Path) -> bool:
    import onnx
    from onnx.external_data_helper import uses_external_data

    return any(uses_external_data(t) for t in onnx.load(str(path), load_external_data=False).graph.initializer)


def _quantize_static(src: Path, dst: Path, calibration, options: dict[str, Any]) -> None:
    import onnx

    from .stages import stage

    model = onnx.load(str(src), load_external_data=False)
    inputs, _ = graph_io(model)
    dtypes = {i.name: np.dtype(i.dtype) for i in inputs}
    op_types = options.get("op_types", ["Conv", "MatMul", "Gemm"])
    nodes = _nodes_to_quantize(model, op_types, options.get("matmuls", "all"), options.get("float_io", False))
    del model
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".calib-") as work:
        cache = Path(work) / "ranges.json"
        _calibrate(src, op_types, nodes, calibration, dtypes, cache, Path(work),
                   optimize=options.get("calibration_session") == "optimized")
        with stage("quantize", detail="static QDQ"):
            _quantize_from_ranges(src, dst, op_types, nodes, cache)


def _quantize_from_ranges(src: Path, dst: Path, op_types: list[str], nodes: list[str] | None, cache: Path) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(src), str(dst),
        None,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=op_types,
        nodes_to_quantize=nodes,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        calibration_cache_path=str(cache),
        use_external_data_format=_is_large(src),
        # Symmetric int8 weights, asymmetric uint8 activations: what ORT's x86 QDQ fusions
        # (QLinearConv, QLinearMatMul) expect.
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
    )


def _is_large(path: Path) -> bool:
    return sum(f.stat().st_size for f in path.parent.iterdir() if f.is_file()) > EXTERNAL_DATA_THRESHOLD


# ---------------------------------------------------------------------------------------------
# running


def load_runner(converted_or_path: ConvertedModel | str | Path, *, threads: int | None = None):
    """An onnxruntime (CPU) session wrapped as ``feeds dict -> outputs dict``."""
    import onnxruntime as ort

    path = converted_or_path.path if isinstance(converted_or_path, ConvertedModel) else Path(converted_or_path)
    so = ort.SessionOptions()
    so.log_severity_level = 3  # constant-folding notices about fp16 kernels are not actionable
    if threads:
        so.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(None, feeds)))

    run.session = session  # for callers that want the raw session (benchmarks)
    return run


# ---------------------------------------------------------------------------------------------
# targets


# Peak memory one ONNX conversion adds to the export process (on top of the loaded model), per kind of
# conversion, as fixed + a x fp32 weight bytes + b x the largest attention-score tensor at the export
# shape (memory.PeakModel). The trace holds the weights twice beside the module (the TorchScript graph and
# the ModelProto); the module is freed once traced (release_module), then static int8's calibration and
# validation sessions run the graph (weights once, activations: unfused attention scores and their
# softmax), and quantize_static holds the float and the quantized model. Provisional, set above the peaks
# known so far: the toy exports of benchmarks/results/export_time (fixed part), the full-size BK-SDM-Tiny U-Net's
# static-int8 calibration at batch 2 (about 4.2 GB process RSS seen with ps in a study run, not a committed
# result, for 1.3 GB of weights and 1.07 GB of attention
# scores) and, before this pass, 12.4 GB for ORT's own calibrator on that U-Net and 20.1 GB for the SD-v1.4
# int8 export (issue 18). The full-size int8 pipelines at batch 2 measured since (benchmarks/results/export_time,
# whole process tree, model included) peak at 6.7-11.0 GiB (BK-SDM-Tiny .. SD-v1.4), below these estimates; a
# tighter refit on export_log.json's per-stage peaks would let larger exports through on smaller machines.
_MEASURED = "benchmarks/results/export_time (toy and full-size int8 pipelines at batch 2); docs/export.md"
MEMORY: dict[str, PeakModel] = {
    "fp32": PeakModel(GIB, 2.5, 3.0, source=_MEASURED),
    "fp16": PeakModel(GIB, 3.0, 3.0, source=_MEASURED),
    "dynamic": PeakModel(GIB, 3.0, 3.0, source=_MEASURED),
    "static": PeakModel(GIB, 3.0, 3.0, source=_MEASURED),
}


class _OnnxTarget(ExportTarget):
    FORMAT = "onnx"
    RELEASES_MODULE = True
    # A U-Net batch axis: optimum's pipelines call the U-Net with 2 rows (guidance) or 1 (none, LCM); one bundle serves
    # both (the speed of the axis vs static batch 2 vs two batch-1 calls: benchmarks/unet_batch.py).
    DEFAULT_BATCH = BATCH_AXIS
    convert = staticmethod(convert)
    load_runner = staticmethod(load_runner)

    @classmethod
    def memory_estimate(cls, component: str, model, shape, options: dict[str, Any]):
        kind = options.get("quantization") or cls.PRECISION
        return peak_estimate(MEMORY.get(kind, MEMORY["static"]),
                             f"ONNX {cls.PRECISION} conversion of the {component} ({shape.height}x{shape.width}, "
                             f"batch {shape.batch})", model, component, shape)

    @classmethod
    def component_options(cls, component: str, request, facts=None) -> dict[str, Any]:
        options = super().component_options(component, request, facts)
        if component == "unet":
            # optimum's ORTUnet feeds the pipeline's one timestep as shape [1] whatever the batch (the U-Net broadcasts
            # it to the rows), so a static-batch U-Net's timestep keeps a free length of its own.
            options["dynamic_axes"] = {"timestep": {0: "timestep_batch"}, **(options.get("dynamic_axes") or {})}
        return options

    @classmethod
    def write_layout_files(cls, root: Path, info: dict[str, Any]) -> list[Path]:
        """optimum's diffusion layout: ``model_index.json`` naming the ONNX pipeline parts (the component folders
        already hold ``model.onnx`` and the source's ``config.json``, written by ``convert``)."""
        from .bundle import write_model_index

        # optimum's ONNX Runtime pipeline class: the latent-consistency one for a U-Net that embeds the guidance.
        pipeline = "ORTLatentConsistencyModelPipeline" if info.get("guidance_embedding") else "ORTStableDiffusionPipeline"
        return [write_model_index(root, info, pipeline, lambda c: ["diffusers", "OnnxRuntimeModel"])]


# int8 thresholds: the VAE decoder's seeded latents reach beyond the calibrated (real) range.
INT8_TOLERANCES = {
    "default": Tolerance(min_psnr=20.0, min_cosine=0.99),
    "vae_decoder": Tolerance(min_psnr=20.0, min_cosine=0.97),
}


# optimum's own atol is 1e-5 (VAE 3e-4) on real weights; random-weight toy and full-size
# models through ORT's fused kernels differ by a few 1e-5, and the decoder's outputs are
# ~[-1, 1] images with long conv chains.
@register_target
class OnnxFp32(_OnnxTarget):
    PRECISION = "fp32"
    DEFAULT = True
    DESCRIPTION = "float32, reference accuracy"
    TOLERANCES = {
        "default": Tolerance(atol=1e-4, rtol=1e-3),
        "vae_decoder": Tolerance(atol=1e-3, rtol=1e-3),
        "vae_encoder": Tolerance(atol=1e-3, rtol=1e-3),
    }


@register_target
class OnnxFp16(_OnnxTarget):
    PRECISION = "fp16"
    DESCRIPTION = "float16 weights and math, softmax/normalisation/pow/reduce/sin/cos kept in fp32, fp32 I/O"
    TOLERANCES = {"default": Tolerance(min_psnr=40.0, min_cosine=0.9995)}
    OPTIONS = {"default": {"io_dtype": "fp32"}}


@register_target
class OnnxInt8Dynamic(_OnnxTarget):
    PRECISION = "int8-dynamic"
    DESCRIPTION = ("weight-only/dynamic int8 (quantize_dynamic): 4x smaller, no calibration; "
                   "ORT's ConvInteger path is SLOWER than fp32 on CPU for conv-heavy U-Net/VAE")
    TOLERANCES = INT8_TOLERANCES
    OPTIONS = {"default": {"quantization": "dynamic"}}


@register_target
class OnnxInt8Static(_OnnxTarget):
    PRECISION = "int8-static"
    DESCRIPTION = ("static QDQ int8 on every Conv/MatMul (per-channel weights, activations calibrated on real "
                   "pipeline inputs); slower than fp32 on CPU (Q/DQ over the attention probabilities)")
    TOLERANCES = INT8_TOLERANCES
    NEEDS_CALIBRATION = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
    OPTIONS = {"default": {"quantization": "static"}}


@register_target
class OnnxInt8(_OnnxTarget):
    PRECISION = "int8"
    # Measured step times of this recipe: benchmarks/results/target and cpu-full (README, docs/bundle_format.md).
    DESCRIPTION = ("recommended int8: static QDQ (calibrated, per-channel int8 weights, uint8 activations) on the "
                   "convolutions and linear projections (MatMuls with a constant weight) of the U-Net and VAE; "
                   "attention's QK^T/AV MatMuls kept float (Q/DQ over the attention probabilities is slower than "
                   "fp32 on CPU); the layers that read the inputs or write the outputs float; dynamic int8 for "
                   "the text encoder")
    TOLERANCES = INT8_TOLERANCES
    NEEDS_CALIBRATION = ("unet", "vae_decoder", "vae_encoder")
    # float_io: conv_in/conv_out and the cross-attention to_k/to_v that read the prompt embeddings stay float
    # (docs/export.md, "ONNX int8 at every batch"): the inputs whose range static int8 fits worst.
    OPTIONS = {"default": {"quantization": "static", "op_types": ["Conv", "Gemm", "MatMul"], "matmuls": "projections",
                           "float_io": True},
               "text_encoder": {"quantization": "dynamic"}}
