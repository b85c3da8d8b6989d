"""numpy ports of the diffusers schedulers that Stable Diffusion bundles use.

Each class is built from a diffusers scheduler config dict (``scheduler_config.json``
or the manifest's ``scheduler`` section) the way ``SchedulerClass.from_config`` does
it: keys the class knows override its own defaults, other keys are ignored. Values
that would select an unported code path (Karras sigmas, thresholding, SDE solvers,
...) raise ``NotImplementedError`` listing every offending key.

Stochastic schedulers (LCM re-noises between steps) draw their noise from the
``generator`` passed to ``step``: a ``runtime.noise.NoiseStream``, the portable
stand-in for diffusers' ``torch.Generator``; the deterministic ones ignore it.

Precision follows diffusers where it is observable: the beta / alpha tables are
float32 (the cumulative product is taken in float64 and rounded, as torch does),
sigma tables are rounded to float32, samples stay float32; scalar coefficients
are float64. Results agree with diffusers' torch schedulers to ~1e-6 relative.
The Kotlin engine mirrors this file line for line.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .noise import NoiseStream

PREDICTION_TYPES = ("epsilon", "v_prediction")

_COMMON_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "steps_offset": 0,
}


def _f32(x: float) -> float:
    """Round a Python float through float32 (diffusers keeps these tables in float32)."""
    return float(np.float32(x))


def _alphas_cumprod(cfg: dict[str, Any]) -> np.ndarray:
    """Cumulative product of (1 - beta) as float32, as diffusers computes it."""
    n = cfg["num_train_timesteps"]
    if cfg["trained_betas"] is not None:
        betas = np.asarray(cfg["trained_betas"], dtype=np.float32)
    elif cfg["beta_schedule"] == "linear":
        betas = np.linspace(cfg["beta_start"], cfg["beta_end"], n).astype(np.float32)
    elif cfg["beta_schedule"] == "scaled_linear":
        roots = np.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, n).astype(np.float32)
        betas = roots * roots
    else:
        raise NotImplementedError(f"beta_schedule {cfg['beta_schedule']!r} is not ported (linear, scaled_linear)")
    alphas = np.float32(1.0) - betas
    return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


class Scheduler:
    """Base class: config handling and the diffusers-like API.

    Subclasses set ``name`` (registry key), ``class_name`` (diffusers' ``_class_name``),
    ``defaults`` (their constructor defaults), ``unsupported`` (key -> the only
    value that is ported), ``draws_noise`` (``step`` needs a generator) and
    ``default_steps`` (the step count a caller gets when it names none).
    """

    name: ClassVar[str]
    class_name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]]
    unsupported: ClassVar[dict[str, Any]] = {}
    draws_noise: ClassVar[bool] = False
    default_steps: ClassVar[int] = 25

    def __init__(self, config: dict[str, Any] | None = None):
        cfg = dict(self.defaults)
        cfg.update({k: v for k, v in (config or {}).items() if k in self.defaults})
        problems = [
            f"{key}={cfg[key]!r} (only {ported!r} is ported)"
            for key, ported in self.unsupported.items()
            if key in cfg and cfg[key] != ported
        ]
        if cfg["prediction_type"] not in PREDICTION_TYPES:
            problems.append(f"prediction_type={cfg['prediction_type']!r} (only {PREDICTION_TYPES} are ported)")
        if problems:
            raise NotImplementedError(f"{self.class_name}: unsupported config: " + "; ".join(problems))
        self.config = cfg
        self.alphas_cumprod = _alphas_cumprod(cfg)
        self.num_inference_steps: int | None = None
        self.timesteps = np.zeros(0, dtype=np.int64)

    @property
    def init_noise_sigma(self) -> float:
        """Standard deviation of the initial noise (multiply N(0, 1) latents by it)."""
        return 1.0

    def set_timesteps(self, num_inference_steps: int) -> None:
        raise NotImplementedError

    def scale_model_input(self, sample: np.ndarray, timestep: float) -> np.ndarray:
        """Scale the denoiser input for ``timestep`` (identity unless overridden)."""
        return sample

    def step(self, model_output: np.ndarray, timestep: float, sample: np.ndarray,
             generator: NoiseStream | None = None) -> np.ndarray:
        """x_{t-1} from the model output at ``timestep``; ``generator`` feeds schedulers that draw noise."""
        raise NotImplementedError

    def _check_ready(self) -> None:
        if self.num_inference_steps is None:
            raise RuntimeError(f"{self.class_name}: call set_timesteps() before step()")

    def _final_alpha_cumprod(self) -> float:
        return 1.0 if self.config["set_alpha_to_one"] else float(self.alphas_cumprod[0])

    def _alpha_cumprod_at(self, timestep: int) -> float:
        return float(self.alphas_cumprod[timestep]) if timestep >= 0 else self._final_alpha_cumprod()

    def _train_sigmas(self) -> np.ndarray:
        """sigma(t) = sqrt((1 - alpha_bar) / alpha_bar) for every training step, float32."""
        ac = self.alphas_cumprod
        return (((np.float32(1.0) - ac) / ac) ** np.float32(0.5)).astype(np.float32)


def _spaced_steps(cfg: dict[str, Any], n: int) -> np.ndarray:
    """Descending float timesteps for PNDM / DDIM / Euler (DPM-Solver has its own rule)."""
    total, spacing = cfg["num_train_timesteps"], cfg["timestep_spacing"]
    if spacing == "linspace":
        return np.linspace(0, total - 1, n)[::-1].copy()
    if spacing == "leading":
        ratio = total // n
        return (np.arange(0, n) * ratio).round()[::-1].astype(np.float64) + cfg["steps_offset"]
    if spacing == "trailing":
        return np.round(np.arange(total, 0, -total / n)) - 1
    raise ValueError(f"timestep_spacing {spacing!r} is not one of linspace, leading, trailing")


class PNDMScheduler(Scheduler):
    """PNDM with ``skip_prk_steps=True`` (pseudo linear multistep only), as SD uses."""

    name = "pndm"
    class_name = "PNDMScheduler"
    defaults = {
        **_COMMON_DEFAULTS,
        "skip_prk_steps": False,
        "set_alpha_to_one": False,
        "timestep_spacing": "leading",
    }
    unsupported = {"skip_prk_steps": True}

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Set the PLMS timesteps (n + 1 of them for n > 1: the second one repeats)."""
        cfg = self.config
        ascending = _spaced_steps(cfg, num_inference_steps)[::-1]
        if cfg["timestep_spacing"] == "linspace":
            ascending = ascending.round()
        ascending = ascending.astype(np.int64)
        plms = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1]
        self.num_inference_steps = num_inference_steps
        self.timesteps = plms.copy()
        self._ets: list[np.ndarray] = []
        self._counter = 0
        self._cur_sample: np.ndarray | None = None

    def step(self, model_output: np.ndarray, timestep: float, sample: np.ndarray,
             generator: NoiseStream | None = None) -> np.ndarray:
        """One PLMS step; the first two calls together form a second-order (Heun-like) step."""
        self._check_ready()
        timestep = int(timestep)
        stride = self.config["num_train_timesteps"] // self.num_inference_steps
        prev_timestep = timestep - stride
        if self._counter != 1:
            self._ets = self._ets[-3:]
            self._ets.append(model_output)
        else:
            prev_timestep = timestep
            timestep = timestep + stride

        ets = self._ets
        if len(ets) == 1 and self._counter == 0:
            self._cur_sample = sample
        elif len(ets) == 1 and self._counter == 1:
            model_output = (model_output + ets[-1]) / 2
            sample = self._cur_sample
            self._cur_sample = None
        elif len(ets) == 2:
            model_output = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            model_output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            model_output = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        prev_sample = self._prev_sample(sample, timestep, prev_timestep, model_output)
        self._counter += 1
        return prev_sample

    def _prev_sample(self, sample: np.ndarray, t: int, t_prev: int, model_output: np.ndarray) -> np.ndarray:
        # Formula (9) of the PNDM paper: x_{t-d} from x_t and the (combined) noise estimate.
        a_t = self._alpha_cumprod_at(t)
        a_prev = self._alpha_cumprod_at(t_prev)
        b_t, b_prev = 1.0 - a_t, 1.0 - a_prev
        if self.config["prediction_type"] == "v_prediction":
            model_output = a_t**0.5 * model_output + b_t**0.5 * sample
        sample_coeff = (a_prev / a_t) ** 0.5
        denom = a_t * b_prev**0.5 + (a_t * b_t * a_prev) ** 0.5
        return (sample_coeff * sample - ((a_prev - a_t) / denom) * model_output).astype(np.float32)


class DDIMScheduler(Scheduler):
    """Deterministic DDIM (eta = 0)."""

    name = "ddim"
    class_name = "DDIMScheduler"
    defaults = {
        **_COMMON_DEFAULTS,
        "clip_sample": True,
        "clip_sample_range": 1.0,
        "set_alpha_to_one": True,
        "thresholding": False,
        "timestep_spacing": "leading",
        "rescale_betas_zero_snr": False,
    }
    unsupported = {"thresholding": False, "rescale_betas_zero_snr": False}

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Set ``num_inference_steps`` descending integer timesteps."""
        if num_inference_steps > self.config["num_train_timesteps"]:
            raise ValueError(f"{num_inference_steps} steps > num_train_timesteps")
        self.num_inference_steps = num_inference_steps
        self.timesteps = _spaced_steps(self.config, num_inference_steps).round().astype(np.int64)

    def step(self, model_output: np.ndarray, timestep: float, sample: np.ndarray,
             generator: NoiseStream | None = None) -> np.ndarray:
        """x_{t-1} from the predicted x_0 and the predicted noise (formula 12 of the DDIM paper, eta=0)."""
        self._check_ready()
        cfg = self.config
        timestep = int(timestep)
        prev_timestep = timestep - cfg["num_train_timesteps"] // self.num_inference_steps
        a_t = self._alpha_cumprod_at(timestep)
        a_prev = self._alpha_cumprod_at(prev_timestep)
        b_t = 1.0 - a_t
        if cfg["prediction_type"] == "epsilon":
            pred_x0 = (sample - b_t**0.5 * model_output) / a_t**0.5
            pred_eps = model_output
        else:
            pred_x0 = a_t**0.5 * sample - b_t**0.5 * model_output
            pred_eps = a_t**0.5 * model_output + b_t**0.5 * sample
        if cfg["clip_sample"]:
            r = cfg["clip_sample_range"]
            pred_x0 = np.clip(pred_x0, -r, r)
        return (a_prev**0.5 * pred_x0 + (1.0 - a_prev) ** 0.5 * pred_eps).astype(np.float32)


class _StepIndexScheduler(Scheduler):
    """Shared step-index bookkeeping of the sigma-based (k-diffusion style) schedulers and LCM."""

    sigmas: np.ndarray

    def _index_for_timestep(self, timestep: float) -> int:
        # diffusers starts at the second match when a timestep repeats, the first otherwise.
        matches = np.flatnonzero(self.timesteps == timestep)
        if len(matches) == 0:
            return self._index_when_missing(timestep)
        return int(matches[1] if len(matches) > 1 else matches[0])

    def _index_when_missing(self, timestep: float) -> int:
        raise ValueError(f"timestep {timestep} is not in the schedule {self.timesteps}")

    def _current_index(self, timestep: float) -> int:
        if self._step_index is None:
            self._step_index = self._index_for_timestep(timestep)
        return self._step_index


class EulerDiscreteScheduler(_StepIndexScheduler):
    """Euler discrete (k-diffusion's ``sample_euler`` without churn)."""

    name = "euler"
    class_name = "EulerDiscreteScheduler"
    defaults = {
        **_COMMON_DEFAULTS,
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "timestep_spacing": "linspace",
        "timestep_type": "discrete",
        "rescale_betas_zero_snr": False,
        "final_sigmas_type": "zero",
    }
    unsupported = {
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "timestep_type": "discrete",
        "rescale_betas_zero_snr": False,
    }

    def __init__(self, config: dict[str, Any] | None = None):
        super().__init__(config)
        self._step_index: int | None = None
        self.sigmas = np.zeros(0, dtype=np.float32)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Set float timesteps and the n + 1 sigmas (the last one 0, or sigma_min)."""
        cfg = self.config
        timesteps = _spaced_steps(cfg, num_inference_steps).astype(np.float32)
        train_sigmas = self._train_sigmas()
        sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
        self.sigmas = np.concatenate([sigmas, [self._last_sigma()]]).astype(np.float32)
        self.timesteps = timesteps
        self.num_inference_steps = num_inference_steps
        self._step_index = None

    def _last_sigma(self) -> float:
        if self.config["final_sigmas_type"] == "zero":
            return 0.0
        if self.config["final_sigmas_type"] == "sigma_min":
            return float(self._train_sigmas()[0])
        raise ValueError(f"final_sigmas_type {self.config['final_sigmas_type']!r} is not zero or sigma_min")

    @property
    def init_noise_sigma(self) -> float:
        max_sigma = float(self.sigmas.max()) if len(self.sigmas) else float(self._train_sigmas().max())
        if self.config["timestep_spacing"] in ("linspace", "trailing"):
            return max_sigma
        return _f32((max_sigma**2 + 1) ** 0.5)

    def scale_model_input(self, sample: np.ndarray, timestep: float) -> np.ndarray:
        """Divide by sqrt(sigma^2 + 1) so the denoiser sees unit-variance input."""
        sigma = float(self.sigmas[self._current_index(timestep)])
        return (sample / ((sigma**2 + 1) ** 0.5)).astype(np.float32)

    def step(self, model_output: np.ndarray, timestep: float, sample: np.ndarray,
             generator: NoiseStream | None = None) -> np.ndarray:
        """One Euler step from sigma_i to sigma_{i+1}."""
        self._check_ready()
        i = self._current_index(timestep)
        sigma = float(self.sigmas[i])
        if self.config["prediction_type"] == "epsilon":
            pred_x0 = sample - sigma * model_output
        else:
            pred_x0 = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        derivative = (sample - pred_x0) / sigma
        dt = float(self.sigmas[i + 1]) - sigma
        self._step_index = i + 1
        return (sample + derivative * dt).astype(np.float32)


class DPMSolverMultistepScheduler(_StepIndexScheduler):
    """DPM-Solver++ (2M by default): ``algorithm_type='dpmsolver++'``, solver order 1 or 2."""

    name = "dpm++"
    class_name = "DPMSolverMultistepScheduler"
    defaults = {
        **_COMMON_DEFAULTS,
        "solver_order": 2,
        "thresholding": False,
        "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint",
        "lower_order_final": True,
        "euler_at_final": False,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_lu_lambdas": False,
        "use_flow_sigmas": False,
        "final_sigmas_type": "zero",
        "lambda_min_clipped": -float("inf"),
        "variance_type": None,
        "timestep_spacing": "linspace",
        "rescale_betas_zero_snr": False,
        "use_dynamic_shifting": False,
    }
    unsupported = {
        "thresholding": False,
        "algorithm_type": "dpmsolver++",
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_lu_lambdas": False,
        "use_flow_sigmas": False,
        "variance_type": None,
        "rescale_betas_zero_snr": False,
        "use_dynamic_shifting": False,
    }

    def __init__(self, config: dict[str, Any] | None = None):
        super().__init__(config)
        cfg = self.config
        if cfg["solver_order"] not in (1, 2):
            raise NotImplementedError(f"solver_order={cfg['solver_order']} (only 1 and 2 are ported)")
        if cfg["solver_type"] not in ("midpoint", "heun"):
            raise NotImplementedError(f"solver_type={cfg['solver_type']!r} (midpoint, heun)")
        self._step_index: int | None = None
        self.sigmas = np.zeros(0, dtype=np.float32)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Set integer timesteps (n + 1 points, the last dropped) and n + 1 sigmas."""
        cfg = self.config
        total, n = cfg["num_train_timesteps"], num_inference_steps
        ac = self.alphas_cumprod
        lambdas = (np.log(np.sqrt(ac)) - np.log(np.sqrt(np.float32(1.0) - ac))).astype(np.float32)
        clipped = int(np.searchsorted(lambdas[::-1], cfg["lambda_min_clipped"]))
        last = total - clipped
        spacing = cfg["timestep_spacing"]
        if spacing == "linspace":
            timesteps = np.linspace(0, last - 1, n + 1).round()[::-1][:-1].astype(np.int64)
        elif spacing == "leading":
            ratio = last // (n + 1)
            timesteps = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].astype(np.int64) + cfg["steps_offset"]
        elif spacing == "trailing":
            timesteps = np.arange(last, 0, -total / n).round().astype(np.int64) - 1
        else:
            raise ValueError(f"timestep_spacing {spacing!r} is not one of linspace, leading, trailing")
        train_sigmas = self._train_sigmas()
        sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
        if cfg["final_sigmas_type"] == "zero":
            last_sigma = 0.0
        elif cfg["final_sigmas_type"] == "sigma_min":
            last_sigma = float(train_sigmas[0])
        else:
            raise ValueError(f"final_sigmas_type {cfg['final_sigmas_type']!r} is not zero or sigma_min")
        self.sigmas = np.concatenate([sigmas, [last_sigma]]).astype(np.float32)
        self.timesteps = timesteps.copy()
        self.num_inference_steps = len(timesteps)
        self._model_outputs: list[np.ndarray | None] = [None] * cfg["solver_order"]
        self._lower_order_nums = 0
        self._step_index = None

    def _index_when_missing(self, timestep: float) -> int:
        return len(self.timesteps) - 1

    @staticmethod
    def _alpha_sigma(sigma: float) -> tuple[float, float]:
        alpha = 1.0 / (sigma**2 + 1) ** 0.5
        return alpha, sigma * alpha

    @staticmethod
    def _lambda(alpha: float, sigma: float) -> float:
        # log(0) = -inf is intended at the final sigma 0 (then exp(-h) = 0).
        with np.errstate(divide="ignore"):
            return float(np.log(alpha) - np.log(sigma))

    def step(self, model_output: np.ndarray, timestep: float, sample: np.ndarray,
             generator: NoiseStream | None = None) -> np.ndarray:
        """One multistep update: first order at the start (and end), second order in between."""
        self._check_ready()
        cfg = self.config
        i = self._current_index(timestep)
        n = len(self.timesteps)
        lower_order_final = i == n - 1 and (
            cfg["euler_at_final"] or (cfg["lower_order_final"] and n < 15) or cfg["final_sigmas_type"] == "zero"
        )

        # 1. Convert the model output to a data (x0) prediction.
        alpha_s, sigma_s = self._alpha_sigma(float(self.sigmas[i]))
        if cfg["prediction_type"] == "epsilon":
            x0 = (sample - sigma_s * model_output) / alpha_s
        else:
            x0 = alpha_s * sample - sigma_s * model_output
        x0 = x0.astype(np.float32)
        self._model_outputs = [*self._model_outputs[1:], x0]

        # 2. First- or second-order update from sigma_i to sigma_{i+1}.
        alpha_t, sigma_t = self._alpha_sigma(float(self.sigmas[i + 1]))
        h = self._lambda(alpha_t, sigma_t) - self._lambda(alpha_s, sigma_s)
        if cfg["solver_order"] == 1 or self._lower_order_nums < 1 or lower_order_final:
            prev = (sigma_t / sigma_s) * sample - (alpha_t * (np.exp(-h) - 1.0)) * x0
        else:
            alpha_s1, sigma_s1 = self._alpha_sigma(float(self.sigmas[i - 1]))
            h_0 = self._lambda(alpha_s, sigma_s) - self._lambda(alpha_s1, sigma_s1)
            m0, m1 = self._model_outputs[-1], self._model_outputs[-2]
            d1 = (1.0 / (h_0 / h)) * (m0 - m1)
            if cfg["solver_type"] == "midpoint":
                prev = (
                    (sigma_t / sigma_s) * sample
                    - (alpha_t * (np.exp(-h) - 1.0)) * m0
                    - 0.5 * (alpha_t * (np.exp(-h) - 1.0)) * d1
                )
            else:
                prev = (
                    (sigma_t / sigma_s) * sample
                    - (alpha_t * (np.exp(-h) - 1.0)) * m0
                    + (alpha_t * ((np.exp(-h) - 1.0) / h + 1.0)) * d1
                )
        if self._lower_order_nums < cfg["solver_order"]:
            self._lower_order_nums += 1
        self._step_index = i + 1
        return prev.astype(np.float32)


class LCMScheduler(_StepIndexScheduler):
    """The latent consistency models' multistep sampler (diffusers' ``LCMScheduler``).

    Timesteps are ``num_inference_steps`` evenly spaced picks (by index) from the distillation's
    solver schedule skip·(1..original_inference_steps) - 1, descending. Each step maps the sample to
    the consistency function's estimate of x_0 (boundary scalings c_skip, c_out) and, except at the
    last step, re-noises it to the next timestep with noise drawn from ``generator``.
    """

    name = "lcm"
    class_name = "LCMScheduler"
    defaults = {
        **_COMMON_DEFAULTS,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "original_inference_steps": 50,
        "clip_sample": False,
        "clip_sample_range": 1.0,
        "set_alpha_to_one": True,
        "thresholding": False,
        "timestep_spacing": "leading",
        "timestep_scaling": 10.0,
        "rescale_betas_zero_snr": False,
    }
    unsupported = {"thresholding": False, "rescale_betas_zero_snr": False}
    draws_noise = True
    default_steps = 4
    sigma_data = 0.5

    def __init__(self, config: dict[str, Any] | None = None):
        super().__init__(config)
        self._step_index: int | None = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Pick ``num_inference_steps`` timesteps from the solver schedule of ``original_inference_steps``."""
        cfg = self.config
        total, original = cfg["num_train_timesteps"], int(cfg["original_inference_steps"])
        if original > total:
            raise ValueError(f"original_inference_steps {original} > num_train_timesteps {total}")
        if not 1 <= num_inference_steps <= original:
            raise ValueError(f"num_inference_steps must be 1..{original} (the original_inference_steps the model "
                             f"was distilled with), got {num_inference_steps}")
        origin = (np.arange(1, original + 1) * (total // original) - 1)[::-1]
        picks = np.floor(np.linspace(0, len(origin), num=num_inference_steps, endpoint=False)).astype(np.int64)
        self.timesteps = origin[picks].astype(np.int64)
        self.num_inference_steps = num_inference_steps
        self._step_index = None

    def boundary_scalings(self, timestep: int) -> tuple[float, float]:
        """(c_skip, c_out) of the consistency parameterisation at ``timestep``."""
        scaled = timestep * self.config["timestep_scaling"]
        c_skip = self.sigma_data**2 / (scaled**2 + self.sigma_data**2)
        c_out = scaled / (scaled**2 + self.sigma_data**2) ** 0.5
        return c_skip, c_out

    def step(self, model_output: np.ndarray, timestep: float, sample: np.ndarray,
             generator: NoiseStream | None = None) -> np.ndarray:
        """The x_0 estimate at the last step; before it, that estimate re-noised to the next timestep."""
        self._check_ready()
        cfg = self.config
        i = self._current_index(timestep)
        timestep = int(timestep)
        last = i == self.num_inference_steps - 1
        prev_timestep = int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else timestep
        a_t = self._alpha_cumprod_at(timestep)
        a_prev = self._alpha_cumprod_at(prev_timestep)
        b_t = 1.0 - a_t
        c_skip, c_out = self.boundary_scalings(timestep)
        if cfg["prediction_type"] == "epsilon":
            pred_x0 = (sample - b_t**0.5 * model_output) / a_t**0.5
        else:
            pred_x0 = a_t**0.5 * sample - b_t**0.5 * model_output
        if cfg["clip_sample"]:
            r = cfg["clip_sample_range"]
            pred_x0 = np.clip(pred_x0, -r, r)
        denoised = (c_out * pred_x0 + c_skip * sample).astype(np.float32)
        self._step_index = i + 1
        if last:
            return denoised
        if generator is None:
            raise ValueError("LCMScheduler re-noises between steps: pass generator=NoiseStream(seed) to step()")
        noise = generator.normal(model_output.shape)
        return (a_prev**0.5 * denoised + (1.0 - a_prev) ** 0.5 * noise).astype(np.float32)


SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.name: cls
    for cls in (PNDMScheduler, DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler, LCMScheduler)
}
_BY_CLASS_NAME = {cls.class_name: cls for cls in SCHEDULERS.values()}


def scheduler_from_config(config: dict[str, Any], name: str | None = None) -> Scheduler:
    """Build a scheduler from a diffusers config dict.

    Args:
        config: the dict of ``scheduler_config.json`` / the manifest's ``scheduler`` section.
        name: a registry key (``pndm``, ``ddim``, ``euler``, ``dpm++``, ``lcm``) to swap the scheduler
            class while keeping the config's beta schedule, as ``OtherScheduler.from_config``
            does; ``None`` uses ``config['_class_name']``.
    """
    if name is not None:
        if name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {name!r}; choose from {sorted(SCHEDULERS)}")
        return SCHEDULERS[name](config)
    class_name = config.get("_class_name")
    if class_name not in _BY_CLASS_NAME:
        raise ValueError(f"scheduler class {class_name!r} is not ported; ported: {sorted(_BY_CLASS_NAME)}")
    return _BY_CLASS_NAME[class_name](config)
