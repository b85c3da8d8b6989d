"""Reading a saved ``.mlpackage`` back, without the Core ML runtime (works on Linux):

- ``spec_io``: declared inputs/outputs (names, shapes, dtypes, layouts) as ``TensorInfo``;
- ``inspect_package``: the weights actually stored (fp16 consts, int8 ``constexpr_affine_dequantize``,
  ``constexpr_blockwise_shift_scale``, 2^n-entry LUTs of ``constexpr_lut_to_dense``), bytes and sizes;
- ``weight_psnr``: every stored weight, dequantized, against its PyTorch parameter (PSNR, peak = max |w|);
- ``package_paths``: the package(s) of a converted component (one, or the two U-Net chunks).

coremltools is imported inside the functions.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..base import ConvertedModel, TensorInfo
from .contract import TEXT_LAYOUT

def numpy_dtype_name(data_type: int) -> str:
    from coremltools.proto import FeatureTypes_pb2 as ft

    table = {ft.ArrayFeatureType.FLOAT32: "float32", ft.ArrayFeatureType.FLOAT16: "float16",
             ft.ArrayFeatureType.INT32: "int32", ft.ArrayFeatureType.DOUBLE: "float64"}
    return table.get(data_type, str(data_type))


def _layout(name: str, shape) -> str | None:
    if name == "encoder_hidden_states" and len(shape) == 4:
        return TEXT_LAYOUT
    if len(shape) == 4:
        return "NCHW"
    return None


def spec_io(path_or_spec) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Declared inputs and outputs of a saved package, as TensorInfo."""
    import coremltools as ct

    spec = path_or_spec if hasattr(path_or_spec, "description") else ct.utils.load_spec(str(path_or_spec))

    def info(f):
        shape = tuple(int(d) for d in f.type.multiArrayType.shape)
        return TensorInfo(f.name, shape, numpy_dtype_name(f.type.multiArrayType.dataType), _layout(f.name, shape))

    return [info(f) for f in spec.description.input], [info(f) for f in spec.description.output]


def load_program(path: Path):
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as load_mil

    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    return load_mil(spec, specification_version=spec.specificationVersion, file_weights_dir=model.weights_dir)


def weight_ops(program):
    """(op, kind, stored bits, stored bytes) for every weight tensor of the program."""
    for op in program.functions["main"].operations:
        if op.op_type == "const":
            val = op.outputs[0].val
            if isinstance(val, np.ndarray) and val.dtype.kind == "f" and val.size >= 16:
                yield op, str(val.dtype).replace("float", "fp"), val.dtype.itemsize * 8, val.nbytes
        elif op.op_type == "constexpr_affine_dequantize":
            data = op.quantized_data.val
            extra = op.scale.val.nbytes + np.asarray(op.zero_point.val).nbytes
            yield op, str(data.dtype), data.dtype.itemsize * 8, data.nbytes + extra
        elif op.op_type == "constexpr_blockwise_shift_scale":
            data = op.data.val
            bits = 4 if "4" in str(op.data.dtype) else data.dtype.itemsize * 8
            yield op, f"int{bits}", bits, data.size * bits // 8 + op.scale.val.nbytes
        elif op.op_type == "constexpr_lut_to_dense":
            lut = op.lut.val
            entries = lut.shape[0] if lut.ndim == 1 else lut.shape[-2]
            bits = int(round(math.log2(entries)))
            n = int(np.prod(op.outputs[0].shape))
            yield op, f"lut{bits}", bits, math.ceil(n * bits / 8) + lut.nbytes


def inspect_package(path: str | Path) -> dict[str, Any]:
    """What a saved package stores: weight tensors by precision, bytes, and the dominant precision."""
    program = load_program(Path(path))
    kinds: dict[str, dict[str, int]] = {}
    largest = 0
    for op, kind, _bits, nbytes in weight_ops(program):
        n = int(np.prod(op.outputs[0].shape))
        largest = max(largest, n)
        entry = kinds.setdefault(kind, {"tensors": 0, "params": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["params"] += n
        entry["bytes"] += nbytes
    compressed = {k: v for k, v in kinds.items() if not k.startswith("fp")}
    dominant = max(compressed, key=lambda k: compressed[k]["params"]) if compressed else (
        max(kinds, key=lambda k: kinds[k]["params"]) if kinds else "none")
    params = sum(v["params"] for v in kinds.values())
    return {
        "weights": kinds,
        "largest_tensor": largest,
        "stored_precision": dominant,
        "compressed_fraction": (sum(v["params"] for v in compressed.values()) / params) if params else 0.0,
        "weight_bytes": sum(v["bytes"] for v in kinds.values()),
        "weights_file_bytes": sum(f.stat().st_size for f in Path(path).rglob("weight.bin")),
        "package_bytes": sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()),
    }


_SUFFIX = re.compile(r"(_to_fp16)?(_quantized|_palettized)?$")


def weight_psnr(path: str | Path, module) -> dict[str, Any]:
    """PSNR (dB, peak = max |w|) of each stored weight, dequantized, against ``module``'s parameters.

    Stored tensors are matched to parameters by name (coremltools names weight constants after
    the traced attribute path). Returns a summary with the worst tensors.
    """
    from ...metrics import psnr

    params = {k.replace(".", "_"): v.detach().float().numpy() for k, v in module.state_dict().items()}
    program = load_program(Path(path))
    rows = []
    unmatched = 0
    for op, kind, _bits, _nbytes in weight_ops(program):
        key = _SUFFIX.sub("", op.name)
        ref = params.get(key)
        if ref is None:
            unmatched += 1
            continue
        stored = op.outputs[0].val if op.op_type == "const" else op.materialized_val_inference()
        stored = np.asarray(stored, dtype=np.float32)
        if stored.size != ref.size:
            unmatched += 1
            continue
        rows.append((op.name, kind, ref.size, psnr(ref.reshape(stored.shape), stored)))
    if not rows:
        return {"tensors": 0, "unmatched": unmatched}
    values = np.array([r[3] for r in rows])
    sizes = np.array([r[2] for r in rows], dtype=np.float64)
    worst = sorted(rows, key=lambda r: r[3])[:3]
    return {
        "tensors": len(rows),
        "unmatched": unmatched,
        "min_db": float(values.min()),
        "median_db": float(np.median(values)),
        "weighted_mean_db": float((values * sizes).sum() / sizes.sum()),
        "worst": [{"name": n, "stored": k, "psnr_db": round(p, 2)} for n, k, _s, p in worst],
    }


def merge_stored(items: list[dict[str, Any]]) -> dict[str, Any]:
    if len(items) == 1:
        return items[0]
    kinds: dict[str, dict[str, int]] = {}
    for it in items:
        for k, v in it["weights"].items():
            e = kinds.setdefault(k, {"tensors": 0, "params": 0, "bytes": 0})
            for f in e:
                e[f] += v[f]
    merged = {"weights": kinds, "stored_precision": items[0]["stored_precision"]}
    for f in ("weight_bytes", "weights_file_bytes", "package_bytes"):
        merged[f] = sum(it[f] for it in items)
    params = sum(v["params"] for v in kinds.values())
    merged["compressed_fraction"] = sum(v["params"] for k, v in kinds.items() if not k.startswith("fp")) / max(params, 1)
    return merged


def merge_psnr(items: list[dict[str, Any]]) -> dict[str, Any]:
    if len(items) == 1:
        return items[0]
    rows = [it for it in items if it.get("tensors")]
    return {
        "tensors": sum(it.get("tensors", 0) for it in items),
        "unmatched": sum(it.get("unmatched", 0) for it in items),
        "min_db": min(it["min_db"] for it in rows),
        "median_db": float(np.median([it["median_db"] for it in rows])),
        "weighted_mean_db": float(np.mean([it["weighted_mean_db"] for it in rows])),
        "worst": sorted((w for it in rows for w in it["worst"]), key=lambda w: w["psnr_db"])[:3],
    }


def package_paths(converted: ConvertedModel) -> list[Path]:
    """The package(s) of a converted component: one, or UnetChunk1 and UnetChunk2 (beside each other)."""
    chunks = converted.extra.get("chunks")
    return [Path(converted.path).parent / c["file"] for c in chunks] if chunks else [Path(converted.path)]


def package_files(path: Path) -> list[Path]:
    """Every file of a package folder, sorted."""
    return sorted(p for p in Path(path).rglob("*") if p.is_file())
