"""Benchmark scenarios as data, and YAML configs that expand into scenario matrices.

A config names a teacher ``source`` and a list of matrix entries; every list-valued
field of an entry is expanded as a cartesian product, on top of ``defaults``::

    name: quick
    source: builtin:mini-sd
    defaults: {resolution: 128, batch: 1, threads: 2, repeats: 5, warmup: 1}
    matrix:
      - model: [teacher, bk-small, bk-tiny]
        component: unet
        backend: [pytorch, onnxruntime]
        precision: fp32
    exclude:
      - {model: bk-tiny, backend: onnxruntime}
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .. import checks
from ..errors import BksdmError, InputError

TEACHER = "teacher"
# ``bk-tiny+lcm``: the model with a latent-consistency guidance embedding and LCMScheduler (``distill.lcm.as_lcm``).
LCM_SUFFIX = "+lcm"


def split_lcm(model: str) -> tuple[str, bool]:
    """(the model without ``+lcm``, whether it had it)."""
    return (model[: -len(LCM_SUFFIX)], True) if model.endswith(LCM_SUFFIX) else (model, False)

# One call of a component, or ``generate``: a whole text-to-image run (text encoder, ``steps``
# U-Net calls, VAE decoder) through the backend's pipeline (diffusers for PyTorch, the
# torch-free bundle pipeline for exported formats).
COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder", "generate")
VAE_COMPONENTS = ("vae_decoder", "vae_encoder", "generate")  # the components a scenario's ``vae`` changes
BUNDLE_MANIFEST = "manifest.json"


class ConfigError(BksdmError, ValueError):
    """A benchmark config that cannot be used; the message says what to change."""


@dataclass(frozen=True)
class Scenario:
    """One measurement: a model component on one backend, precision, shape, thread count and device.

    ``model`` is ``teacher`` (the ``source`` pipeline's own U-Net), a BK-SDM variant name built
    from it (``bk-base``, ``bk-small``, ``bk-tiny``), a removal-plan file built from it (docs/plans.md), a
    student U-Net folder, or an exported bundle
    folder (``bksdm-edge export``; run as it is on its format's backend, at its own precision and shapes).
    ``+lcm`` after a model (``bk-tiny+lcm``) adds a latent-consistency guidance embedding and LCMScheduler:
    the architecture of a ``distill --objective lcm`` student (one U-Net row per step, no CFG), for timing.
    ``device`` is ``cpu``, ``cuda[:N]`` or ``android:SERIAL``.
    ``batch`` 2 is classifier-free guidance (for ``generate``: guidance 7.5; batch 1 runs without CFG).
    ``steps`` is the number of denoising steps of ``generate`` (ignored by the other components).
    """

    model: str
    component: str
    backend: str
    precision: str = "fp32"
    resolution: int = 512
    batch: int = 1
    threads: int = 2
    device: str = "cpu"
    repeats: int = 5
    warmup: int = 1
    source: str = "builtin:mini-sd"
    timeout_s: float = 1800.0
    steps: int = 25
    calibration_samples: int = 3  # seeded inputs for static int8 (speed benchmark; accuracy is checked elsewhere)
    # Backend-specific extras: ``export`` (exporter options) and ``runner`` (load_runner keywords).
    # Scenarios that set options must name them with ``variant`` (it keys the artifact cache and the report).
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    variant: str = ""
    # The VAE of vae_decoder / vae_encoder / generate scenarios: ``teacher`` (the source's own) or a ``--vae``
    # source (``tiny``: the TAESD architecture sized for the source; a distill-vae run; an AutoencoderTiny folder).
    vae: str = TEACHER

    def __post_init__(self):
        if self.component not in COMPONENTS:
            raise ConfigError(f"unknown component {self.component!r}; choose from {', '.join(COMPONENTS)}")
        if self.options.get("export") and not self.variant:
            raise ConfigError("a scenario with export options needs a 'variant' name (e.g. variant: conv-only)")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1 (got {self.steps})")
        if self.repeats < 1 or self.warmup < 0:
            raise ConfigError(f"repeats must be >= 1 and warmup >= 0 (got {self.repeats}, {self.warmup})")
        if self.threads < 1 or self.batch < 1:
            raise ConfigError(f"threads and batch must be >= 1 (got {self.threads}, {self.batch})")
        if not self.is_bundle:  # a bundle runs at its own exported size
            try:
                checks.resolution(self.source, self.resolution, flags=("resolution",))
            except InputError as err:
                raise ConfigError(f"scenario {self.model}/{self.component}: {err}") from None
        if self.vae != TEACHER and self.component not in VAE_COMPONENTS:
            raise ConfigError(f"vae: {self.vae} applies to {', '.join(VAE_COMPONENTS)}, not {self.component}")

    @property
    def is_teacher(self) -> bool:
        return self.model == TEACHER

    @property
    def run_steps(self) -> int | None:
        """Denoising steps of one run: ``steps`` for ``generate``, None for single-call components."""
        return self.steps if self.component == "generate" else None

    @property
    def is_bundle(self) -> bool:
        """``model`` is an exported bundle folder (has a manifest)."""
        return self.model != TEACHER and (Path(self.model) / BUNDLE_MANIFEST).is_file()

    @property
    def label(self) -> str:
        steps = f"/{self.run_steps}steps" if self.run_steps else ""
        vae = f"+vae:{self.vae}" if self.vae != TEACHER else ""
        return (f"{self.model}{vae}/{self.component}{steps}/{self.backend}-{self.precision}"
                f"{'+' + self.variant if self.variant else ''}/{self.resolution}px"
                f"/b{self.batch}/t{self.threads}/{self.device}")

    def teacher_scenario(self) -> "Scenario":
        """The teacher's scenario this row is compared with (same everything but the model and the VAE)."""
        return replace(self, model=TEACHER, vae=TEACHER)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


SCENARIO_FIELDS = {f.name for f in fields(Scenario)}


@dataclass
class BenchConfig:
    """A resolved config: the run name, its scenarios and the raw config for the record."""

    name: str
    scenarios: list[Scenario]
    plugins: list[str] = field(default_factory=list)  # modules imported (parent and workers) to register backends
    android: dict[str, Any] = field(default_factory=dict)  # adb / tool paths for android:SERIAL devices
    raw: dict[str, Any] = field(default_factory=dict)


def _as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _matches(s: Scenario, rule: dict[str, Any]) -> bool:
    return all(getattr(s, k) in _as_list(v) for k, v in rule.items())


def expand(raw: dict[str, Any], overrides: dict[str, Any] | None = None) -> BenchConfig:
    """Expand a config dict into scenarios.

    Args:
        raw: the parsed YAML (``name``, ``source``, ``defaults``, ``matrix``, ``exclude``, ``plugins``, ``android``).
        overrides: fields forced on every scenario (e.g. ``{"device": "android:R58M"}`` from the command line).
    """
    unknown = set(raw) - {"name", "description", "source", "defaults", "matrix", "exclude", "plugins", "android"}
    if unknown:
        raise ConfigError(f"unknown config keys {sorted(unknown)}")
    if not raw.get("matrix"):
        raise ConfigError("the config has no 'matrix' entries")
    base = dict(raw.get("defaults") or {})
    if "source" in raw:
        base["source"] = raw["source"]
    scenarios: list[Scenario] = []
    for entry in raw["matrix"]:
        merged = {**base, **entry}
        bad = set(merged) - SCENARIO_FIELDS
        if bad:
            raise ConfigError(f"unknown scenario fields {sorted(bad)} in matrix entry {entry}")
        keys = list(merged)
        for combo in itertools.product(*(_as_list(merged[k]) if k != "options" else [merged[k]] for k in keys)):
            values = dict(zip(keys, combo))
            values.update(overrides or {})
            for req in ("model", "component", "backend"):
                if req not in values:
                    raise ConfigError(f"matrix entry {entry} does not set {req!r}")
            s = Scenario(**values)
            if any(_matches(s, rule) for rule in raw.get("exclude") or []):
                continue
            if s not in scenarios:
                scenarios.append(s)
    return BenchConfig(
        name=str(raw.get("name", "bench")), scenarios=scenarios, plugins=list(raw.get("plugins") or []),
        android=dict(raw.get("android") or {}), raw=raw,
    )


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> BenchConfig:
    """Read a YAML config file and expand it (see ``expand``)."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"benchmark config {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    raw.setdefault("name", path.stem)
    return expand(raw, overrides)
