"""Core ML back-end: mlprogram ``.mlpackage`` bundles that Apple's Swift ``StableDiffusion`` package loads.

One module per job:

- ``precisions``: the table, one row per ``--precision`` (storage type, weight-PSNR floor, output PSNR
  gate, description); the targets, their help text and the checks are made from it.
- ``environment``: checks before any model is loaded (coremltools/numpy/scikit-learn, deployment
  target vs precision), where Core ML can run, coremltools' console noise.
- ``contract``: Apple's Swift contract as data (package names, inputs, outputs, dtypes, layouts, the
  Swift files they come from); checks a bundle's ``Resources/`` against it; renders docs/coreml.md's table.
- ``adapters``: PyTorch wrappers giving the components the I/O Swift feeds (float token ids,
  channels-first text states, the encoder's latent distribution), Apple's names.
- ``chunking``: the U-Net split into UnetChunk1 / UnetChunk2.
- ``convert``: trace + ``coremltools.convert`` (fp16 compute, fp32 I/O) + weight compression.
- ``package``: reading a saved package back (declared I/O, stored weights, weight PSNR) on Linux.
- ``check``: the static check the shared validation runs where Core ML cannot.
- ``runner``: running packages on macOS, chunks chained as Swift does.
- ``targets``: the registered targets and the Core ML hooks of ``export_bundle`` (options, the
  ``Resources/`` layout, the manifest's ``coreml`` section, the contract check).

Importing this package registers the targets and imports no torch (``convert``, ``adapters`` and
``chunking`` do, when used). docs/coreml.md is the user's guide.
"""

from .precisions import PRECISIONS, CoreMLPrecision, get_precision
from .targets import RESOURCES, TARGETS, CoreMLTarget

__all__ = ["PRECISIONS", "CoreMLPrecision", "get_precision", "RESOURCES", "TARGETS", "CoreMLTarget"]
