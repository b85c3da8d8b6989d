"""The one validation routine every export format uses.

For each input set it runs the PyTorch module and the exported model and checks, in
order, output names, then shapes, then values (allclose for fp32 targets, PSNR and
cosine similarity for reduced precision), as optimum's ``_run_validation`` does. Every
failure is collected; ``ValidationReport.raise_if_failed`` raises one
``ValidationFailed`` listing them all. A back-end whose runtime cannot run here (Core ML
on Linux) declares a ``static_check`` instead: names and shapes are then checked
against the saved model's declared I/O, and the report says the numeric checks were
skipped and why.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ValidationFailed
from ..metrics import error_metrics
from .base import ConvertedModel
from .registry import ExportTarget, Tolerance
from .tensor_io import from_runner_outputs, to_runner_inputs


def compare(reference: np.ndarray, actual: np.ndarray, tol: Tolerance) -> tuple[dict[str, float], list[str]]:
    """Metrics of ``actual`` against ``reference`` and the thresholds of ``tol`` they break."""
    metrics = error_metrics(reference, actual)
    diff = np.abs(reference.astype(np.float64) - actual.astype(np.float64))
    broken = []
    if not np.all(np.isfinite(actual)):
        broken.append(f"{int((~np.isfinite(actual)).sum())} non-finite values")
    if tol.atol is not None:
        rtol = tol.rtol or 0.0
        bad = diff > tol.atol + rtol * np.abs(reference)
        if bad.any():
            broken.append(
                f"not allclose (atol={tol.atol:g}, rtol={rtol:g}): {int(bad.sum())}/{bad.size} values differ, "
                f"max |diff| {metrics['max_abs_diff']:.3g}"
            )
    if tol.min_psnr is not None and metrics["psnr_db"] < tol.min_psnr:
        broken.append(f"PSNR {metrics['psnr_db']:.1f} dB < {tol.min_psnr:g} dB")
    if tol.min_cosine is not None and metrics["cosine"] < tol.min_cosine:
        broken.append(f"cosine similarity {metrics['cosine']:.6f} < {tol.min_cosine:g}")
    return metrics, broken


@dataclass
class ComponentReport:
    component: str
    target: str
    tolerance: dict[str, float]
    numeric_checks: str = "run"  # "run" | "skipped: <why>"
    sets: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class ValidationReport:
    """Validation results of every component of an export (JSON-able, saved as validation.json)."""

    target: str
    components: dict[str, ComponentReport] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    bundle: list[str] = field(default_factory=list)  # problems of the bundle as a whole (``check_layout``)

    @property
    def failures(self) -> list[str]:
        return [f"{c}: {f}" for c, r in self.components.items() for f in r.failures] + [
            f"bundle: {f}" for f in self.bundle]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def numeric_checks(self) -> str:
        """"run" when every component's values were compared with PyTorch, else the first reason they were not."""
        skipped = [r.numeric_checks for r in self.components.values() if r.numeric_checks != "run"]
        return skipped[0] if skipped else "run"

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "passed": self.passed,
            "context": self.context,
            "components": {
                c: asdict(r) | {"passed": r.passed} for c, r in self.components.items()
            },
            "bundle": self.bundle,
            "failures": self.failures,
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    def raise_if_failed(self, where: str = "") -> None:
        if self.failures:
            lines = "\n  - ".join(self.failures)
            raise ValidationFailed(
                f"validation of {self.target} failed ({len(self.failures)} problem(s)){where}:\n  - {lines}"
            )

    def summary(self) -> str:
        rows = []
        for c, r in self.components.items():
            if r.numeric_checks != "run":
                rows.append(f"{c}: {'passed' if r.passed else 'FAILED'} (numeric checks {r.numeric_checks})")
                continue
            worst_psnr = min((s["psnr_db"] for s in r.sets if "psnr_db" in s), default=float("nan"))
            worst_diff = max((s["max_abs_diff"] for s in r.sets if "max_abs_diff" in s), default=float("nan"))
            rows.append(
                f"{c}: {'passed' if r.passed else 'FAILED'} over {len(r.sets)} input sets, "
                f"min PSNR {worst_psnr:.1f} dB, max |diff| {worst_diff:.3g}"
            )
        return "\n".join(rows)


def reference_outputs(module, input_sets: list, input_names: tuple[str, ...]) -> list[list[np.ndarray]]:
    """The PyTorch module's outputs (float32 numpy, one list per set) on every input set."""
    import torch

    out = []
    for input_set in input_sets:
        with torch.no_grad():
            ref = module(*(torch.from_numpy(np.asarray(input_set.inputs[n])) for n in input_names))
        out.append([ref.float().numpy()] if isinstance(ref, torch.Tensor) else [r.float().numpy() for r in ref])
    return out


def validate_component(
    component: str,
    target: type[ExportTarget],
    module,
    converted: ConvertedModel,
    input_sets: list,
    *,
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    runner: Callable | None = None,
    tolerance: Tolerance | None = None,
    references: list[list[np.ndarray]] | None = None,
) -> ComponentReport:
    """Validate one exported component against its PyTorch module.

    Args:
        component: component name (``unet``, ...).
        target: the export target (its tolerances and static check are used).
        module: the PyTorch wrapper the export was made from (eval mode).
        converted: what the back-end wrote (declared inputs/outputs in canonical order).
        input_sets: ``InputSet`` list (canonical input names -> numpy arrays).
        input_names, output_names: the component's canonical names (``COMPONENTS[...]``).
        runner: the loaded exported model; ``None`` loads it with ``target.load_runner`` unless the
            target's runtime cannot run here.
        tolerance: thresholds instead of the target's (a ``RuntimeVariant``'s, e.g. OpenVINO bf16).
        references: ``reference_outputs(module, input_sets, input_names)`` computed earlier (the export
            frees a PyTorch module's weights once it is converted); None runs ``module`` here.
    """

    tol = tolerance or target.tolerance(component)
    report = ComponentReport(component, target.name(), tol.to_json())
    fail = report.failures.append

    # 1. Names: the saved model must declare one input/output per canonical tensor.
    if len(converted.inputs) != len(input_names):
        fail(f"model declares inputs {[i.name for i in converted.inputs]}, expected {len(input_names)}: "
             f"{list(input_names)}")
    if len(converted.outputs) != len(output_names):
        fail(f"model declares outputs {[o.name for o in converted.outputs]}, expected {list(output_names)}")
    if report.failures:
        return report
    for kind, declared, canonical in (("input", converted.inputs, input_names),
                                      ("output", converted.outputs, output_names)):
        expected = [target.TENSOR_NAMES.get(n, n) for n in canonical]
        if [t.name for t in declared] != expected:
            fail(f"{kind} names {[t.name for t in declared]} != expected {expected}")
    if report.failures:
        return report

    unavailable = target.runtime_unavailable()
    if unavailable:
        report.numeric_checks = f"skipped: {unavailable}"
        if target.static_check is None:
            fail(f"cannot run here ({unavailable}) and the target declares no static check")
        else:
            for problem in target.static_check(converted):
                fail(f"static check: {problem}")
    elif runner is None:
        runner = target.load_runner(converted)

    if references is None:
        references = reference_outputs(module, input_sets, input_names)
    for input_set, refs in zip(input_sets, references):
        entry: dict[str, Any] = {"name": input_set.name}
        report.sets.append(entry)
        arrays = [input_set.inputs[n] for n in input_names]

        # 2. Shapes (declared ones when the model cannot run here).
        if runner is None:
            for info, r in zip(converted.outputs, refs):
                declared = tuple(info.shape)
                canonical = (declared[0], declared[3], declared[1], declared[2]) if info.layout == "NHWC" else declared
                if any(isinstance(d, int) and d != s for d, s in zip(canonical, r.shape)) or len(canonical) != r.ndim:
                    fail(f"[{input_set.name}] output {info.name!r} declared shape {list(declared)}, PyTorch gives "
                         f"{list(r.shape)}")
            continue
        try:
            raw = runner(to_runner_inputs(converted.inputs, arrays))
        except Exception as err:  # the runtime's own error says what is wrong with the model
            fail(f"[{input_set.name}] running the exported model failed: {type(err).__name__}: {err}")
            continue
        missing = [o.name for o in converted.outputs if o.name not in raw]
        if missing:
            fail(f"[{input_set.name}] outputs {missing} missing; the model returned {sorted(raw)}")
            continue
        outs = from_runner_outputs(converted.outputs, raw)
        for info, r, o in zip(converted.outputs, refs, outs):
            if o.shape != r.shape:
                fail(f"[{input_set.name}] output {info.name!r} has shape {list(o.shape)}, PyTorch gives {list(r.shape)}")
                continue
            # 3. Values.
            metrics, broken = compare(r, o, tol)
            entry.update(metrics)
            for b in broken:
                fail(f"[{input_set.name}] output {info.name!r}: {b}")
        entry["passed"] = not any(f.startswith(f"[{input_set.name}]") for f in report.failures)
    return report


def validate_runtime_variants(component: str, target: type[ExportTarget], module, converted: ConvertedModel,
                              input_sets: list, **names) -> dict[str, dict[str, Any]]:
    """Validate each of the target's ``RUNTIME_VARIANTS`` that this machine can run (same routine, the variant's
    tolerances); returns {variant: {"passed", "min_psnr_db", "min_cosine", "failures"} or {"checked": False, "why"}}.

    A failing variant does not fail the export; the outcome goes to the manifest so that readers only choose a
    variant that held (``names``: ``input_names``/``output_names`` as for ``validate_component``).
    """
    results: dict[str, dict[str, Any]] = {}
    for variant, spec in target.RUNTIME_VARIANTS.items():
        why = target.runtime_unavailable() or target.runtime_variant_unavailable(variant)
        if why:
            results[variant] = {"checked": False, "why": why}
            continue
        runner = target.load_runner(converted, **spec.runner_options)
        r = validate_component(component, target, module, converted, input_sets, runner=runner,
                               tolerance=spec.tolerance(component), **names)
        results[variant] = {
            "checked": True, "passed": r.passed, "tolerance": r.tolerance,
            "min_psnr_db": min((x["psnr_db"] for x in r.sets if "psnr_db" in x), default=None),
            "min_cosine": min((x["cosine"] for x in r.sets if "cosine" in x), default=None),
            "failures": r.failures[:5],
        }
    return results
