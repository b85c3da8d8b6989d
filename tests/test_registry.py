"""The export-target registry: every target is declared as data and has a small-model test."""

from pathlib import Path

import pytest

from bksdm_edge.export.base import ExportError
from bksdm_edge.export.registry import ExportTarget, Tolerance, all_targets, get_target, register_target

TESTS = Path(__file__).parent


def test_every_registered_target_has_a_small_model_test():
    """Each (format, precision) must appear in tests/test_export_<format>.py (by name, or via a test parametrized
    over ``precisions(FORMAT)``); add a test when adding a target."""
    missing = []
    for fmt, precision in all_targets():
        test_file = TESTS / f"test_export_{fmt}.py"
        text = test_file.read_text() if test_file.exists() else ""
        enumerates = f'precisions("{fmt}")' in text  # a test parametrized over the registry covers every precision
        if not (enumerates or f'"{precision}"' in text or f"'{precision}'" in text):
            missing.append(f"{fmt}/{precision}")
    assert not missing, f"registered targets without a small-model test: {missing}"


def test_every_target_declares_tolerances_for_its_components():
    for (fmt, precision), target in all_targets().items():
        assert target.FORMAT == fmt and target.PRECISION == precision
        for component in target.COMPONENTS:
            tol = target.tolerance(component)
            assert isinstance(tol, Tolerance)
            if precision == "fp32":
                assert tol.atol is not None, f"{fmt}/{precision} {component}: fp32 targets check allclose"
            else:
                assert tol.min_psnr is not None or tol.min_cosine is not None or tol.atol is not None


def test_component_names_match_the_components_module():
    from bksdm_edge.export import components, registry

    assert registry.ALL_COMPONENTS == tuple(components.COMPONENTS)
    assert registry.DEFAULT_COMPONENTS == tuple(components.DEFAULT_COMPONENTS)


def test_onnx_targets():
    assert {p for f, p in all_targets() if f == "onnx"} == {"fp32", "fp16", "int8", "int8-dynamic", "int8-static"}
    assert "unet" in get_target("onnx", "int8").NEEDS_CALIBRATION
    assert get_target("onnx", "int8-dynamic").NEEDS_CALIBRATION == ()


def test_unknown_format_and_precision_are_clear_errors():
    with pytest.raises(ExportError, match="Unknown export format 'tensorrt'"):
        get_target("tensorrt", "fp32")
    with pytest.raises(ExportError, match="choose from .*fp16.*fp32"):
        get_target("onnx", "int4")


def test_register_rejects_incomplete_and_duplicate_targets():
    with pytest.raises(TypeError, match="default"):
        @register_target
        class NoDefault(ExportTarget):
            FORMAT, PRECISION = "onnx", "x-test"
            TOLERANCES = {"unet": Tolerance(atol=1)}
            convert = load_runner = staticmethod(lambda *a, **k: None)

    onnx_fp32 = get_target("onnx", "fp32")
    with pytest.raises(TypeError, match="two export targets"):
        register_target(type("Dup", (onnx_fp32,), {}))
