"""The OpenVINO benchmark back-end: exports through the registry's ``openvino`` targets, runs on the CPU plugin.

Each row records what the plugin actually ran (``backend_info``): the inference precision it settled on (a
scenario sets ``options: {runner: {inference_precision: bf16}}`` with a ``variant`` name for the bf16 hint; the
default is f32, the precision the export validated) and the kernel (primitive) types of its convolutions and
matmuls from the compiled execution graph, whose names carry the ISA (``brgconv_avx512_bf16``,
``brgemm_avx512_amx_int8``, ``jit_avx512_core_vnni``...).
"""

from __future__ import annotations

from .backends import ExportBackend, register_backend


@register_backend
class OpenVinoBackend(ExportBackend):
    NAME = "openvino"
    FORMAT = "openvino"
    RUNTIME_MODULES = ("openvino", "bksdm_edge.export.openvino")

    def load(self, s, artifact_dir, meta):
        from ..export.openvino import execution_info

        loaded = super().load(s, artifact_dir, meta)
        loaded.info = {**(loaded.info or {}), **execution_info(loaded.run.compiled)}
        return loaded
