"""Export of SD components to edge formats (ONNX, TFLite/LiteRT, Core ML), validated and bundled.

The path of one export, module by module::

    ExportRequest (request.py)  ->  export_bundle (pipeline.py)
        load the model, shapes per component (U-Net: the requested batch; text encoder/VAE: 1)
        prepare_inputs (inputs.py): seeded sets, one recorded pipeline run for validation + calibration
        per component: target.convert -> validate_component (validation.py; static check where it cannot run)
        build_manifest (manifest.py), the target's layout files and bundle check, BundleWriter.commit (bundle.py)

- ``request.py``: the frozen ``ExportRequest`` and ``ShapeConfig``; checked before any model is loaded.
- ``registry.py``: export targets (format x precision) as data, and the hooks a format overrides.
- ``components.py``: the exportable components as ``nn.Module`` wrappers with canonical I/O.
- ``inputs.py``: the one place that prepares a component's inputs.
- ``validation.py``: the one validation routine (names, shapes, values; every failure reported together).
- ``manifest.py``: the one manifest builder (torch-free; the golden bundle of the Kotlin engine uses it too).
- ``bundle.py``: atomic bundle writing, sha256 manifest, verification (numpy- and torch-free).
- ``cli_args.py``: the export flags shared by ``bksdm-edge export`` and ``export/to_*.py``, help from the registry.
- ``memory.py``: the pre-flight memory check; ``tensor_io.py``: canonical arrays in and out of a runner.
- Back-ends, one per format: ``onnx.py``, ``tflite.py``, ``coreml/`` (a package, one module per job);
  ``split_einsum.py``: Apple's Neural Engine attention layout (Core ML).
"""
