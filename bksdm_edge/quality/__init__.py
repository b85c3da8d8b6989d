"""Quality measurement: does a compressed or exported model still make the images it should?

- ``digits/``: the trained built-in teacher ``builtin:mini-sd-digits`` and its digit scorer: data and captions
  (``digits.data``), the scorer and its scores (``digits.scorer``: prompt accuracy, Fréchet distance), and
  generating/scoring images from PyTorch or an exported bundle (``digits.evaluation``);
- ``eval``: ``bksdm-edge eval``, the paper's protocol for real models (FID, IS, CLIP score on a caption file).

The FID formula itself is ``bksdm_edge.metrics.frechet_distance``. Experiments built on these (training the
digits teacher, the small-scale BK-SDM ablation) live in ``benchmarks/mini_sd/``; see docs/quality.md.
"""
