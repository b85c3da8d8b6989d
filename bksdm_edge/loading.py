"""Load a Stable Diffusion teacher from a diffusers folder, a hub id, or a built-in architecture."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .builtins import BUILTINS, BuiltinSpec
from .errors import BksdmError, first_line
from .tokenizer_files import write_clip_tokenizer_files

BUILTIN_PREFIX = "builtin:"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class ModelSourceError(BksdmError, ValueError):
    """A model source that cannot be loaded; the message says what to do."""


@dataclass
class SDModel:
    """The parts of a Stable Diffusion pipeline that the toolkit works with.

    ``source`` is the string the user gave; ``family`` is "sd-v1" or "sd-v2";
    parts that were not requested are None.
    """

    source: str
    family: str
    unet: Any = None
    vae: Any = None
    text_encoder: Any = None
    tokenizer: Any = None
    scheduler: Any = None
    unet_source: str | None = None
    vae_source: str | None = None  # None: the pipeline's own VAE; else the ``--vae`` source that replaced it
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def is_lcm(self) -> bool:
        """True when the U-Net embeds the guidance scale (``time_cond_proj_dim``): a latent consistency model."""
        return self.unet is not None and getattr(self.unet.config, "time_cond_proj_dim", None) is not None

    def to_pipeline(self):
        """Assemble a diffusers ``StableDiffusionPipeline``, or a ``LatentConsistencyModelPipeline`` for a latent
        consistency model (``is_lcm``); no safety checker."""
        from diffusers import LatentConsistencyModelPipeline, StableDiffusionPipeline

        cls = LatentConsistencyModelPipeline if self.is_lcm else StableDiffusionPipeline
        return cls(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 8

    @property
    def native_resolution(self) -> int:
        """The image size the U-Net was built for (its sample size x the VAE factor)."""
        if self.unet is not None:
            return self.unet.config.sample_size * self.vae_scale_factor
        return self.vae.config.sample_size


def family_of_unet_config(config: Any) -> str:
    """Guess the SD family from a U-Net config (cross-attention width 768 = v1, 1024 = v2)."""
    cad = config.get("cross_attention_dim") if isinstance(config, dict) else config.cross_attention_dim
    linear = config.get("use_linear_projection") if isinstance(config, dict) else config.use_linear_projection
    return "sd-v2" if (linear or cad == 1024) else "sd-v1"


def builtin_names() -> list[str]:
    return [BUILTIN_PREFIX + name for name in BUILTINS]


def _scheduler_from_config(config: dict[str, Any]):
    import diffusers

    cls = getattr(diffusers, config["_class_name"])
    return cls.from_config({k: v for k, v in config.items() if k != "_class_name"})


def build_builtin(spec: BuiltinSpec, components=COMPONENTS, dtype=torch.float32, weights: bool = True) -> SDModel:
    """Build a built-in architecture with seeded random weights (or its packaged trained weights).

    With ``weights=False`` the modules are built on the meta device (no memory, no init): enough for profiling.
    """
    if not weights:
        with torch.device("meta"):
            model = build_builtin(dataclasses.replace(spec, weights=None), components, dtype)
        return model
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    model = SDModel(source=BUILTIN_PREFIX + spec.name, family=spec.family, info={"builtin": spec.name})
    # Each component gets its own seed so building a subset gives the same weights.
    if "unet" in components:
        torch.manual_seed(spec.seed)
        model.unet = UNet2DConditionModel(**spec.unet)
    if "vae" in components:
        torch.manual_seed(spec.seed + 1)
        model.vae = AutoencoderKL(**spec.vae)
    if "text_encoder" in components:
        torch.manual_seed(spec.seed + 2)
        model.text_encoder = CLIPTextModel(CLIPTextConfig(**spec.text_encoder))
    if "tokenizer" in components:
        with tempfile.TemporaryDirectory() as tmp:
            model.tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer_files(tmp, spec.pad_token))
    if "scheduler" in components:
        model.scheduler = _scheduler_from_config(spec.scheduler)
    if spec.weights is not None:
        _load_packaged_weights(model, spec)
    for part in (model.unet, model.vae, model.text_encoder):
        if part is not None:
            if dtype != torch.float32:
                part.to(dtype)
            part.eval()
    return model


def _load_packaged_weights(model: SDModel, spec: BuiltinSpec) -> None:
    from importlib import resources

    from safetensors.torch import load_file

    root = resources.files("bksdm_edge") / spec.weights
    for name in ("unet", "vae", "text_encoder"):
        part = getattr(model, name)
        if part is not None:
            part.load_state_dict(load_file(str(root / f"{name}.safetensors")))


def _load_diffusers(src: str, components, dtype, weights: bool = True) -> SDModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    is_local = Path(src).exists()
    if is_local and not (Path(src) / "model_index.json").exists():
        raise ModelSourceError(
            f"{src} is a folder but not a diffusers pipeline (no model_index.json). Pass a folder saved with "
            f"StableDiffusionPipeline.save_pretrained, a hub id, or one of: {', '.join(builtin_names())}"
        )
    if weights:
        loaders = {
            "unet": lambda: UNet2DConditionModel.from_pretrained(src, subfolder="unet", torch_dtype=dtype),
            "vae": lambda: AutoencoderKL.from_pretrained(src, subfolder="vae", torch_dtype=dtype),
            "text_encoder": lambda: CLIPTextModel.from_pretrained(src, subfolder="text_encoder", torch_dtype=dtype),
        }
    else:  # configs only, modules on the meta device
        from transformers import CLIPTextConfig

        def meta(build):
            with torch.device("meta"):
                return build()

        loaders = {
            "unet": lambda: meta(lambda: UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(src, subfolder="unet"))),
            "vae": lambda: meta(lambda: AutoencoderKL.from_config(AutoencoderKL.load_config(src, subfolder="vae"))),
            "text_encoder": lambda: meta(
                lambda: CLIPTextModel(CLIPTextConfig.from_pretrained(src, subfolder="text_encoder"))
            ),
        }
    loaders.update({
        "tokenizer": lambda: CLIPTokenizer.from_pretrained(src, subfolder="tokenizer"),
        "scheduler": lambda: _load_scheduler(src),
    })
    model = SDModel(source=src, family="sd-v1")
    try:
        for name in components:
            setattr(model, name, loaders[name]())
    except (OSError, ValueError) as err:
        if is_local:
            raise ModelSourceError(
                f"{src}: could not load its {name} ({first_line(err)}): a file is missing, truncated or corrupt; "
                "save the pipeline again (StableDiffusionPipeline.save_pretrained) or copy it again"
            ) from err
        raise ModelSourceError(
            f"Could not load {name!r} of hub id {src!r} ({first_line(err)}). A hub id needs network access to "
            "huggingface.co or the model in your local Hugging Face cache (HF_HUB_OFFLINE=1 only reads the cache; "
            "log in with `hf auth login` for gated models); a local folder must exist. Without downloads, use a "
            f"built-in architecture: {', '.join(builtin_names())}."
        ) from err
    unet_config = model.unet.config if model.unet is not None else _read_unet_config(src)
    if unet_config is not None:
        model.family = family_of_unet_config(unet_config)
    for part in (model.unet, model.vae, model.text_encoder):
        if part is not None:
            part.eval()
    return model


def _load_scheduler(src: str):
    from diffusers import DDPMScheduler

    # Any ConfigMixin reads the JSON; the real class comes from its _class_name.
    config = DDPMScheduler.load_config(src, subfolder="scheduler")
    return _scheduler_from_config(dict(config))


def _read_unet_config(src: str) -> dict | None:
    path = Path(src) / "unet" / "config.json"
    return json.loads(path.read_text()) if path.exists() else None


def load_unet(path: str | Path, dtype=torch.float32, weights: bool = True):
    """Load a U-Net folder (e.g. a distilled student saved by ``save_student``)."""
    from diffusers import UNet2DConditionModel

    path = Path(path)
    if not (path / "config.json").exists():
        raise ModelSourceError(
            f"{path} is not a diffusers U-Net folder (no config.json). Pass the folder written by "
            "`bksdm-edge build` or `bksdm-edge distill` (e.g. RUN_DIR/unet)."
        )
    try:
        if not weights:
            with torch.device("meta"):
                return UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(path)).eval()
        return UNet2DConditionModel.from_pretrained(path, torch_dtype=dtype).eval()
    except (OSError, ValueError) as err:  # diffusers wraps corrupt/truncated/missing weight files in OSError
        raise ModelSourceError(
            f"{path}: cannot load this U-Net folder ({first_line(err)}): its config or weight file is missing, "
            "truncated or corrupt; build or distil the student again, or copy the folder again"
        ) from err


LCM_SCHEDULER = "LCMScheduler"


def lcm_scheduler(model: SDModel, unet_dir: Path | None = None):
    """The scheduler of a latent consistency model: the U-Net folder's ``scheduler_config.json`` (written by
    ``distill --objective lcm``), else LCMScheduler with the source's noise schedule (diffusers' defaults)."""
    import inspect

    from diffusers import LCMScheduler

    path = unet_dir / "scheduler_config.json" if unet_dir is not None else None
    if path is not None and path.exists():
        config = json.loads(path.read_text())
        model.info["scheduler"] = str(path)
    elif type(model.scheduler).__name__ == LCM_SCHEDULER:
        return model.scheduler
    else:
        config = dict(model.scheduler.config)
        model.info["scheduler"] = f"LCMScheduler from the {type(model.scheduler).__name__} noise schedule"
    known = inspect.signature(LCMScheduler.__init__).parameters
    return LCMScheduler.from_config({k: v for k, v in config.items() if k in known})


def load_model(
    src: str, *, unet: str | Path | None = None, vae: str | Path | None = None, components=COMPONENTS,
    dtype=torch.float32, weights: bool = True,
) -> SDModel:
    """Load a Stable Diffusion model.

    A U-Net with a guidance embedding (``time_cond_proj_dim``: a latent consistency model) comes with an
    ``LCMScheduler``: the one its folder holds (``scheduler_config.json``), else one on the source's noise schedule.

    Args:
        src: ``builtin:NAME`` (see ``builtin_names()``), a local diffusers pipeline folder, or a hub id.
        unet: optional U-Net folder (a distilled student) that replaces the pipeline's U-Net.
        vae: optional VAE that replaces the pipeline's (``bksdm_edge.tiny_vae.load_vae``: ``tiny``, a
            ``distill-vae`` run folder, an ``AutoencoderTiny`` folder or hub id); None or ``teacher`` keeps it.
        components: which of ``unet, vae, text_encoder, tokenizer, scheduler`` to load.
        dtype: torch dtype of the loaded weights.
        weights: False builds the modules from their configs on the meta device (profiling, planning).
    """
    components = tuple(components)
    unknown = set(components) - set(COMPONENTS)
    if unknown:
        raise ModelSourceError(f"Unknown components {sorted(unknown)}; choose from {COMPONENTS}")
    replace_vae = vae is not None and str(vae) != "teacher" and "vae" in components
    wanted = tuple(c for c in components if not (c == "unet" and unet is not None) and not (c == "vae" and replace_vae))
    if src.startswith(BUILTIN_PREFIX):
        name = src[len(BUILTIN_PREFIX) :]
        if name not in BUILTINS:
            raise ModelSourceError(f"Unknown built-in model {src!r}; choose from {', '.join(builtin_names())}")
        model = build_builtin(BUILTINS[name], wanted, dtype, weights)
    else:
        model = _load_diffusers(src, wanted, dtype, weights)
    if unet is not None and "unet" in components:
        model.unet = load_unet(unet, dtype, weights)
        model.unet_source = str(unet)
        model.info["student"] = _student_info(src, unet)
    if model.is_lcm and model.scheduler is not None:
        model.scheduler = lcm_scheduler(model, Path(unet) if unet is not None else None)
    if replace_vae:
        from .tiny_vae import load_vae

        model.vae, model.info["vae"] = load_vae(vae, teacher_vae_config(src), dtype=dtype, weights=weights)
        model.vae_source = str(vae)
    return model


def teacher_unet_config(src: str) -> dict[str, Any] | None:
    """The U-Net config of a model source without loading weights (None when it cannot be read)."""
    if src.startswith(BUILTIN_PREFIX):
        spec = BUILTINS.get(src[len(BUILTIN_PREFIX):])
        return dict(spec.unet) if spec else None
    local = _read_unet_config(src)
    if local is not None or Path(src).exists():
        return local
    from diffusers import UNet2DConditionModel

    try:
        return dict(UNet2DConditionModel.load_config(src, subfolder="unet"))
    except OSError:
        return None


def _student_info(src: str, unet: str | Path) -> dict[str, Any]:
    """The student folder's ``bksdm_edge.json`` plus the removal plan it corresponds to (see plans.resolve)."""
    from .plans.resolve import read_student_meta, student_info

    teacher = teacher_unet_config(src)
    if teacher is None:
        return {**read_student_meta(unet), "plan_note": f"the U-Net config of {src} could not be read"}
    return student_info(unet, teacher)


def teacher_vae_config(src: str) -> dict[str, Any]:
    """The config of the source's own VAE, read without building it (what a replacement VAE must fit)."""
    if src.startswith(BUILTIN_PREFIX):
        name = src[len(BUILTIN_PREFIX) :]
        if name not in BUILTINS:
            raise ModelSourceError(f"Unknown built-in model {src!r}; choose from {', '.join(builtin_names())}")
        return dict(BUILTINS[name].vae)
    from diffusers import AutoencoderKL

    try:
        return dict(AutoencoderKL.load_config(src, subfolder="vae"))
    except OSError as err:
        raise ModelSourceError(f"Could not read the VAE config of {src!r}: {err}") from err
