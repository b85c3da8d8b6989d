package dev.bksdm.edge.engine

/**
 * Kotlin ports of the numpy schedulers in `bksdm_edge/runtime/schedulers.py` (themselves
 * ports of diffusers'), line for line, including where values are rounded to float32.
 * Samples and model outputs are float32 arrays; [step] and [scaleModelInput] write into
 * an `out` array that may be the input array itself (all updates are element-wise), so
 * the denoising loop allocates nothing per step. Schedulers that draw noise ([drawsNoise]:
 * LCM re-noises between steps) take it from the [NoiseStream] passed to [step].
 */
abstract class Scheduler(
    config: Map<String, Any?>,
    val className: String,
    defaults: Map<String, Any?>,
    unsupported: Map<String, Any?>
) {
    val config: Map<String, Any?>
    val alphasCumprod: DoubleArray
    var numInferenceSteps = 0
        protected set
    var timesteps = DoubleArray(0)
        protected set

    init {
        val cfg = LinkedHashMap(defaults)
        for ((k, v) in config) if (k in defaults) cfg[k] = v
        val problems = ArrayList<String>()
        for ((key, ported) in unsupported) if (cfg[key] != ported) problems.add("$key=${cfg[key]} (only $ported is ported)")
        val prediction = cfg["prediction_type"]
        if (prediction != "epsilon" && prediction != "v_prediction") problems.add("prediction_type=$prediction (only epsilon, v_prediction are ported)")
        if (problems.isNotEmpty()) throw UnsupportedSchedulerException("$className: unsupported config: " + problems.joinToString("; "))
        this.config = cfg
        alphasCumprod = computeAlphasCumprod(cfg)
    }

    protected val trainTimesteps: Int get() = num(config, "num_train_timesteps").toInt()
    protected val vPrediction: Boolean get() = config["prediction_type"] == "v_prediction"

    /** Standard deviation of the initial noise. */
    open val initNoiseSigma: Double get() = 1.0

    /** Sigmas (n + 1 values) for sigma-based schedulers, null for the others. */
    open val sigmas: DoubleArray? get() = null

    /** True when [step] draws noise and so needs a [NoiseStream]. */
    open val drawsNoise: Boolean get() = false

    /** Steps used when a request names none. */
    open val defaultSteps: Int get() = 25

    abstract fun setTimesteps(numInferenceSteps: Int)

    /** Scale the denoiser input for [timestep] into [out] (identity unless overridden). */
    open fun scaleModelInput(sample: FloatArray, timestep: Double, out: FloatArray) {
        if (out !== sample) System.arraycopy(sample, 0, out, 0, sample.size)
    }

    /** One denoising step: writes the previous sample into [out] (may be [sample]); [noise] feeds [drawsNoise] ones. */
    abstract fun step(modelOutput: FloatArray, timestep: Double, sample: FloatArray, out: FloatArray, noise: NoiseStream? = null)

    protected fun checkReady() {
        if (numInferenceSteps == 0) throw IllegalStateException("$className: call setTimesteps() before step()")
    }

    protected fun alphaCumprodAt(t: Int): Double =
        if (t >= 0) alphasCumprod[t] else if (config["set_alpha_to_one"] == true) 1.0 else alphasCumprod[0]

    /** sigma(t) = sqrt((1 - alpha_bar) / alpha_bar) for every training step, float32 values. */
    protected fun trainSigmas(): DoubleArray = DoubleArray(alphasCumprod.size) {
        val a = alphasCumprod[it].toFloat()
        Math.sqrt(((1f - a) / a).toDouble()).toFloat().toDouble()
    }

    /** Descending timesteps for PNDM / DDIM / Euler, as `_spaced_steps` in Python. */
    protected fun spacedSteps(n: Int): DoubleArray {
        val total = trainTimesteps
        return when (val spacing = config["timestep_spacing"]) {
            "linspace" -> reversed(linspace(0.0, (total - 1).toDouble(), n))
            "leading" -> {
                val ratio = total / n
                val offset = num(config, "steps_offset")
                DoubleArray(n) { (n - 1 - it).toDouble() * ratio + offset }
            }
            "trailing" -> {
                val a = arange(total.toDouble(), 0.0, -total.toDouble() / n)
                DoubleArray(a.size) { Math.rint(a[it]) - 1.0 }
            }
            else -> throw IllegalArgumentException("timestep_spacing $spacing is not one of linspace, leading, trailing")
        }
    }

    companion object {
        internal val COMMON_DEFAULTS: Map<String, Any?> = mapOf(
            "num_train_timesteps" to 1000.0,
            "beta_start" to 0.0001,
            "beta_end" to 0.02,
            "beta_schedule" to "linear",
            "trained_betas" to null,
            "prediction_type" to "epsilon",
            "steps_offset" to 0.0
        )

        internal fun num(cfg: Map<String, Any?>, key: String): Double {
            val v = cfg[key]
            return when (v) {
                is Double -> v
                is Number -> v.toDouble()
                else -> throw UnsupportedSchedulerException("scheduler config '$key' is not a number: $v")
            }
        }

        /** float32 alpha_bar table: float32 betas, cumulative product in float64 then rounded (as torch). */
        internal fun computeAlphasCumprod(cfg: Map<String, Any?>): DoubleArray {
            val n = num(cfg, "num_train_timesteps").toInt()
            val trained = cfg["trained_betas"]
            val betas = FloatArray(n)
            if (trained is List<*>) {
                if (trained.size != n) throw UnsupportedSchedulerException("trained_betas has ${trained.size} values, expected $n")
                for (i in 0 until n) betas[i] = (trained[i] as Number).toFloat()
            } else when (cfg["beta_schedule"]) {
                "linear" -> {
                    val l = linspace(num(cfg, "beta_start"), num(cfg, "beta_end"), n)
                    for (i in 0 until n) betas[i] = l[i].toFloat()
                }
                "scaled_linear" -> {
                    val l = linspace(Math.sqrt(num(cfg, "beta_start")), Math.sqrt(num(cfg, "beta_end")), n)
                    for (i in 0 until n) {
                        val r = l[i].toFloat()
                        betas[i] = r * r
                    }
                }
                else -> throw UnsupportedSchedulerException("beta_schedule ${cfg["beta_schedule"]} is not ported (linear, scaled_linear)")
            }
            val out = DoubleArray(n)
            var acc = 1.0
            for (i in 0 until n) {
                acc *= (1f - betas[i]).toDouble()
                out[i] = acc.toFloat().toDouble()
            }
            return out
        }

        /** numpy.linspace(start, stop, n): i * step + start, the last value exactly stop. */
        internal fun linspace(start: Double, stop: Double, n: Int): DoubleArray {
            if (n == 1) return doubleArrayOf(start)
            val step = (stop - start) / (n - 1)
            val y = DoubleArray(n) { it * step + start }
            y[n - 1] = stop
            return y
        }

        /** numpy.arange(start, stop, step) for floats: ceil((stop - start) / step) values. */
        internal fun arange(start: Double, stop: Double, step: Double): DoubleArray {
            val len = Math.max(0.0, Math.ceil((stop - start) / step)).toInt()
            val delta = (start + step) - start // numpy fills from its first two values
            return DoubleArray(len) { start + it * delta }
        }

        /** numpy.interp on the grid 0, 1, ..., fp.size - 1. */
        internal fun interpOnIndexGrid(x: Double, fp: DoubleArray): Double {
            val last = fp.size - 1
            if (x <= 0.0) return fp[0]
            if (x >= last) return fp[last]
            val j = Math.floor(x).toInt()
            val slope = fp[j + 1] - fp[j]
            return slope * (x - j) + fp[j]
        }

        internal fun reversed(a: DoubleArray): DoubleArray = DoubleArray(a.size) { a[a.size - 1 - it] }
    }
}

/** The scheduler config selects a code path that is not ported. */
class UnsupportedSchedulerException(message: String) : Exception(message)

/** PNDM with skip_prk_steps = true (pseudo linear multistep only), as SD uses. */
class PndmScheduler(config: Map<String, Any?>) : Scheduler(config, "PNDMScheduler", DEFAULTS, mapOf("skip_prk_steps" to true)) {
    private val ets = ArrayList<FloatArray>(4)
    private var curSample: FloatArray? = null
    private var combined = FloatArray(0)
    private var counter = 0

    override fun setTimesteps(numInferenceSteps: Int) {
        val asc = Scheduler.reversed(spacedSteps(numInferenceSteps))
        val ascending = LongArray(asc.size) { Math.rint(asc[it]).toLong() }
        val plms = ArrayList<Long>()
        for (i in 0 until ascending.size - 1) plms.add(ascending[i])
        if (ascending.size >= 2) plms.add(ascending[ascending.size - 2])
        plms.add(ascending[ascending.size - 1])
        timesteps = DoubleArray(plms.size) { plms[plms.size - 1 - it].toDouble() }
        this.numInferenceSteps = numInferenceSteps
        ets.clear()
        counter = 0
        curSample = null
    }

    override fun step(modelOutput: FloatArray, timestep: Double, sample: FloatArray, out: FloatArray, noise: NoiseStream?) {
        checkReady()
        val n = sample.size
        if (combined.size != n) combined = FloatArray(n)
        var t = timestep.toInt()
        val stride = trainTimesteps / numInferenceSteps
        var prevT = t - stride
        if (counter != 1) {
            // Keep copies of the last four model outputs (the caller reuses its buffers).
            val slot = if (ets.size == 4) ets.removeAt(0) else FloatArray(n)
            System.arraycopy(modelOutput, 0, slot, 0, n)
            ets.add(slot)
        } else {
            prevT = t
            t += stride
        }
        var x = sample
        val k = ets.size
        if (k == 1 && counter == 0) {
            val keep = curSample ?: FloatArray(n)
            System.arraycopy(sample, 0, keep, 0, n)
            curSample = keep
            System.arraycopy(modelOutput, 0, combined, 0, n)
        } else if (k == 1 && counter == 1) {
            val e1 = ets[0]
            for (i in 0 until n) combined[i] = (modelOutput[i] + e1[i]) / 2f
            x = curSample!!
        } else if (k == 2) {
            val e1 = ets[1]
            val e2 = ets[0]
            for (i in 0 until n) combined[i] = (3f * e1[i] - e2[i]) / 2f
        } else if (k == 3) {
            val e1 = ets[2]
            val e2 = ets[1]
            val e3 = ets[0]
            for (i in 0 until n) combined[i] = (23f * e1[i] - 16f * e2[i] + 5f * e3[i]) / 12f
        } else {
            val e1 = ets[3]
            val e2 = ets[2]
            val e3 = ets[1]
            val e4 = ets[0]
            val w = (1.0 / 24).toFloat()
            for (i in 0 until n) combined[i] = w * (55f * e1[i] - 59f * e2[i] + 37f * e3[i] - 9f * e4[i])
        }
        prevSample(x, t, prevT, combined, out)
        counter++
    }

    private fun prevSample(sample: FloatArray, t: Int, prevT: Int, modelOutput: FloatArray, out: FloatArray) {
        // Formula (9) of the PNDM paper.
        val aT = alphaCumprodAt(t)
        val aPrev = alphaCumprodAt(prevT)
        val bT = 1.0 - aT
        val bPrev = 1.0 - aPrev
        if (vPrediction) {
            val c1 = Math.sqrt(aT).toFloat()
            val c2 = Math.sqrt(bT).toFloat()
            for (i in modelOutput.indices) modelOutput[i] = c1 * modelOutput[i] + c2 * sample[i]
        }
        val sampleCoeff = Math.sqrt(aPrev / aT).toFloat()
        val denom = aT * Math.sqrt(bPrev) + Math.sqrt(aT * bT * aPrev)
        val k = ((aPrev - aT) / denom).toFloat()
        for (i in out.indices) out[i] = sampleCoeff * sample[i] - k * modelOutput[i]
    }

    companion object {
        val DEFAULTS: Map<String, Any?> = Scheduler.COMMON_DEFAULTS + mapOf(
            "skip_prk_steps" to false, "set_alpha_to_one" to false, "timestep_spacing" to "leading"
        )
    }
}

/** Deterministic DDIM (eta = 0). */
class DdimScheduler(config: Map<String, Any?>) : Scheduler(
    config, "DDIMScheduler", DEFAULTS, mapOf("thresholding" to false, "rescale_betas_zero_snr" to false)
) {
    override fun setTimesteps(numInferenceSteps: Int) {
        if (numInferenceSteps > trainTimesteps) throw IllegalArgumentException("$numInferenceSteps steps > num_train_timesteps")
        val s = spacedSteps(numInferenceSteps)
        timesteps = DoubleArray(s.size) { Math.rint(s[it]) }
        this.numInferenceSteps = numInferenceSteps
    }

    override fun step(modelOutput: FloatArray, timestep: Double, sample: FloatArray, out: FloatArray, noise: NoiseStream?) {
        checkReady()
        val t = timestep.toInt()
        val prevT = t - trainTimesteps / numInferenceSteps
        val aT = alphaCumprodAt(t)
        val aPrev = alphaCumprodAt(prevT)
        val bT = 1.0 - aT
        val sqA = Math.sqrt(aT).toFloat()
        val sqB = Math.sqrt(bT).toFloat()
        val clip = config["clip_sample"] == true
        val r = if (clip) Scheduler.num(config, "clip_sample_range").toFloat() else 0f
        val cX0 = Math.sqrt(aPrev).toFloat()
        val cEps = Math.sqrt(1.0 - aPrev).toFloat()
        for (i in out.indices) {
            val s = sample[i]
            val m = modelOutput[i]
            var x0: Float
            val eps: Float
            if (vPrediction) {
                x0 = sqA * s - sqB * m
                eps = sqA * m + sqB * s
            } else {
                x0 = (s - sqB * m) / sqA
                eps = m
            }
            if (clip) x0 = Math.min(Math.max(x0, -r), r)
            out[i] = cX0 * x0 + cEps * eps
        }
    }

    companion object {
        val DEFAULTS: Map<String, Any?> = Scheduler.COMMON_DEFAULTS + mapOf(
            "clip_sample" to true, "clip_sample_range" to 1.0, "set_alpha_to_one" to true, "thresholding" to false,
            "timestep_spacing" to "leading", "rescale_betas_zero_snr" to false
        )
    }
}

/** Shared step-index bookkeeping of the sigma-based schedulers and LCM. */
abstract class StepIndexScheduler(config: Map<String, Any?>, className: String, defaults: Map<String, Any?>, unsupported: Map<String, Any?>) :
    Scheduler(config, className, defaults, unsupported) {
    protected var stepIndex = -1

    protected open fun indexWhenMissing(timestep: Double): Int =
        throw IllegalArgumentException("timestep $timestep is not in the schedule")

    protected fun currentIndex(timestep: Double): Int {
        if (stepIndex < 0) {
            // diffusers starts at the second match when a timestep repeats.
            var first = -1
            var second = -1
            for (i in timesteps.indices) if (timesteps[i] == timestep) {
                if (first < 0) first = i else if (second < 0) second = i
            }
            stepIndex = if (second >= 0) second else if (first >= 0) first else indexWhenMissing(timestep)
        }
        return stepIndex
    }
}

/** The sigma-based (k-diffusion style) schedulers. */
abstract class SigmaScheduler(config: Map<String, Any?>, className: String, defaults: Map<String, Any?>, unsupported: Map<String, Any?>) :
    StepIndexScheduler(config, className, defaults, unsupported) {
    protected var sigmaTable = DoubleArray(0)
    override val sigmas: DoubleArray? get() = sigmaTable

    protected fun lastSigma(): Double = when (config["final_sigmas_type"]) {
        "zero" -> 0.0
        "sigma_min" -> trainSigmas()[0]
        else -> throw UnsupportedSchedulerException("final_sigmas_type ${config["final_sigmas_type"]} is not zero or sigma_min")
    }
}

/** Euler discrete (k-diffusion's sample_euler without churn). */
class EulerDiscreteScheduler(config: Map<String, Any?>) : SigmaScheduler(config, "EulerDiscreteScheduler", DEFAULTS, UNSUPPORTED) {
    override fun setTimesteps(numInferenceSteps: Int) {
        val s = spacedSteps(numInferenceSteps)
        val ts = DoubleArray(s.size) { s[it].toFloat().toDouble() }
        val train = trainSigmas()
        val sig = DoubleArray(ts.size + 1)
        for (i in ts.indices) sig[i] = Scheduler.interpOnIndexGrid(ts[i], train).toFloat().toDouble()
        sig[ts.size] = lastSigma().toFloat().toDouble()
        timesteps = ts
        sigmaTable = sig
        this.numInferenceSteps = numInferenceSteps
        stepIndex = -1
    }

    override val initNoiseSigma: Double
        get() {
            val table = if (sigmaTable.isNotEmpty()) sigmaTable else trainSigmas()
            var max = table[0]
            for (v in table) if (v > max) max = v
            val spacing = config["timestep_spacing"]
            return if (spacing == "linspace" || spacing == "trailing") max else Math.sqrt(max * max + 1).toFloat().toDouble()
        }

    override fun scaleModelInput(sample: FloatArray, timestep: Double, out: FloatArray) {
        val sigma = sigmaTable[currentIndex(timestep)]
        val c = Math.sqrt(sigma * sigma + 1).toFloat()
        for (i in out.indices) out[i] = sample[i] / c
    }

    override fun step(modelOutput: FloatArray, timestep: Double, sample: FloatArray, out: FloatArray, noise: NoiseStream?) {
        checkReady()
        val i0 = currentIndex(timestep)
        val sigma = sigmaTable[i0]
        val sF = sigma.toFloat()
        val dt = (sigmaTable[i0 + 1] - sigma).toFloat()
        val vOut = (-sigma / Math.sqrt(sigma * sigma + 1)).toFloat()
        val vIn = (sigma * sigma + 1).toFloat()
        for (i in out.indices) {
            val s = sample[i]
            val x0 = if (vPrediction) modelOutput[i] * vOut + s / vIn else s - sF * modelOutput[i]
            val derivative = (s - x0) / sF
            out[i] = s + derivative * dt
        }
        stepIndex = i0 + 1
    }

    companion object {
        val DEFAULTS: Map<String, Any?> = Scheduler.COMMON_DEFAULTS + mapOf(
            "interpolation_type" to "linear", "use_karras_sigmas" to false, "use_exponential_sigmas" to false,
            "use_beta_sigmas" to false, "timestep_spacing" to "linspace", "timestep_type" to "discrete",
            "rescale_betas_zero_snr" to false, "final_sigmas_type" to "zero"
        )
        val UNSUPPORTED: Map<String, Any?> = mapOf(
            "interpolation_type" to "linear", "use_karras_sigmas" to false, "use_exponential_sigmas" to false,
            "use_beta_sigmas" to false, "timestep_type" to "discrete", "rescale_betas_zero_snr" to false
        )
    }
}

/** DPM-Solver++ (2M by default): algorithm_type dpmsolver++, solver order 1 or 2. */
class DpmSolverMultistepScheduler(config: Map<String, Any?>) :
    SigmaScheduler(config, "DPMSolverMultistepScheduler", DEFAULTS, UNSUPPORTED) {
    private val order: Int = Scheduler.num(this.config, "solver_order").toInt()
    private val heun: Boolean
    private var x0Prev = FloatArray(0) // data prediction of the previous step
    private var x0Cur = FloatArray(0)
    private var lowerOrderNums = 0

    init {
        if (order != 1 && order != 2) throw UnsupportedSchedulerException("solver_order=$order (only 1 and 2 are ported)")
        val solverType = this.config["solver_type"]
        if (solverType != "midpoint" && solverType != "heun") throw UnsupportedSchedulerException("solver_type=$solverType (midpoint, heun)")
        heun = solverType == "heun"
    }

    override fun setTimesteps(numInferenceSteps: Int) {
        val total = trainTimesteps
        val n = numInferenceSteps
        val lambdaMin = Scheduler.num(config, "lambda_min_clipped")
        // searchsorted(flip(lambda_t), lambda_min_clipped): lambda_t decreases with t.
        var clipped = 0
        for (t in alphasCumprod.indices.reversed()) {
            val a = alphasCumprod[t].toFloat()
            val lam = (Math.log(Math.sqrt(a.toDouble()).toFloat().toDouble()) -
                Math.log(Math.sqrt((1f - a).toDouble()).toFloat().toDouble())).toFloat().toDouble()
            if (lam < lambdaMin) clipped++ else break
        }
        val last = total - clipped
        val ts: DoubleArray = when (val spacing = config["timestep_spacing"]) {
            "linspace" -> {
                val l = Scheduler.linspace(0.0, (last - 1).toDouble(), n + 1)
                DoubleArray(n) { Math.rint(l[n - it]) }
            }
            "leading" -> {
                val ratio = last / (n + 1)
                val offset = Scheduler.num(config, "steps_offset")
                DoubleArray(n) { (n - it).toDouble() * ratio + offset }
            }
            "trailing" -> {
                val a = Scheduler.arange(last.toDouble(), 0.0, -total.toDouble() / n)
                DoubleArray(a.size) { Math.rint(a[it]) - 1.0 }
            }
            else -> throw IllegalArgumentException("timestep_spacing $spacing is not one of linspace, leading, trailing")
        }
        val train = trainSigmas()
        val sig = DoubleArray(ts.size + 1)
        for (i in ts.indices) sig[i] = Scheduler.interpOnIndexGrid(ts[i], train).toFloat().toDouble()
        sig[ts.size] = lastSigma().toFloat().toDouble()
        timesteps = ts
        sigmaTable = sig
        this.numInferenceSteps = ts.size
        lowerOrderNums = 0
        stepIndex = -1
    }

    override fun indexWhenMissing(timestep: Double): Int = timesteps.size - 1

    override fun step(modelOutput: FloatArray, timestep: Double, sample: FloatArray, out: FloatArray, noise: NoiseStream?) {
        checkReady()
        val size = sample.size
        if (x0Cur.size != size) {
            x0Cur = FloatArray(size)
            x0Prev = FloatArray(size)
        }
        val i0 = currentIndex(timestep)
        val n = timesteps.size
        val lowerOrderFinalCfg = config["lower_order_final"] == true
        val lowerOrderFinal = i0 == n - 1 &&
            (config["euler_at_final"] == true || (lowerOrderFinalCfg && n < 15) || config["final_sigmas_type"] == "zero")

        // 1. Convert the model output to a data (x0) prediction; keep the previous one.
        val swap = x0Prev
        x0Prev = x0Cur
        x0Cur = swap
        val sigmaS0 = sigmaTable[i0]
        val alphaS = 1.0 / Math.sqrt(sigmaS0 * sigmaS0 + 1)
        val sigmaS = sigmaS0 * alphaS
        val aF = alphaS.toFloat()
        val sF = sigmaS.toFloat()
        for (i in 0 until size) {
            x0Cur[i] = if (vPrediction) aF * sample[i] - sF * modelOutput[i] else (sample[i] - sF * modelOutput[i]) / aF
        }

        // 2. First- or second-order update from sigma_i to sigma_{i+1}.
        val sigmaT0 = sigmaTable[i0 + 1]
        val alphaT = 1.0 / Math.sqrt(sigmaT0 * sigmaT0 + 1)
        val sigmaT = sigmaT0 * alphaT
        val lambdaS = Math.log(alphaS) - Math.log(sigmaS)
        val h = (Math.log(alphaT) - Math.log(sigmaT)) - lambdaS // +inf at the final sigma 0
        val c1 = (sigmaT / sigmaS).toFloat()
        val c2 = alphaT * (Math.exp(-h) - 1.0)
        if (order == 1 || lowerOrderNums < 1 || lowerOrderFinal) {
            for (i in 0 until size) out[i] = (c1 * sample[i] - c2 * x0Cur[i]).toFloat()
        } else {
            val sigmaS1 = sigmaTable[i0 - 1]
            val alphaS1 = 1.0 / Math.sqrt(sigmaS1 * sigmaS1 + 1)
            val h0 = lambdaS - (Math.log(alphaS1) - Math.log(sigmaS1 * alphaS1))
            val r = (1.0 / (h0 / h)).toFloat()
            val c3 = if (heun) alphaT * ((Math.exp(-h) - 1.0) / h + 1.0) else 0.5 * c2
            for (i in 0 until size) {
                val d1 = r * (x0Cur[i] - x0Prev[i])
                val term1 = c1 * sample[i]
                out[i] = if (heun) (term1 - c2 * x0Cur[i] + c3 * d1).toFloat() else (term1 - c2 * x0Cur[i] - c3 * d1).toFloat()
            }
        }
        if (lowerOrderNums < order) lowerOrderNums++
        stepIndex = i0 + 1
    }

    companion object {
        val DEFAULTS: Map<String, Any?> = Scheduler.COMMON_DEFAULTS + mapOf(
            "solver_order" to 2.0, "thresholding" to false, "algorithm_type" to "dpmsolver++", "solver_type" to "midpoint",
            "lower_order_final" to true, "euler_at_final" to false, "use_karras_sigmas" to false,
            "use_exponential_sigmas" to false, "use_beta_sigmas" to false, "use_lu_lambdas" to false,
            "use_flow_sigmas" to false, "final_sigmas_type" to "zero", "lambda_min_clipped" to Double.NEGATIVE_INFINITY,
            "variance_type" to null, "timestep_spacing" to "linspace", "rescale_betas_zero_snr" to false,
            "use_dynamic_shifting" to false
        )
        val UNSUPPORTED: Map<String, Any?> = mapOf(
            "thresholding" to false, "algorithm_type" to "dpmsolver++", "use_karras_sigmas" to false,
            "use_exponential_sigmas" to false, "use_beta_sigmas" to false, "use_lu_lambdas" to false,
            "use_flow_sigmas" to false, "variance_type" to null, "rescale_betas_zero_snr" to false,
            "use_dynamic_shifting" to false
        )
    }
}

/**
 * The latent consistency models' sampler (diffusers' LCMScheduler): timesteps picked by index from the
 * distillation's solver schedule, each step the consistency function's x0 estimate, re-noised to the next
 * timestep (noise from the [NoiseStream]) except at the last step.
 */
class LcmScheduler(config: Map<String, Any?>) : StepIndexScheduler(
    config, "LCMScheduler", DEFAULTS, mapOf("thresholding" to false, "rescale_betas_zero_snr" to false)
) {
    private var noiseBuffer = FloatArray(0)
    override val drawsNoise: Boolean get() = true
    override val defaultSteps: Int get() = 4

    override fun setTimesteps(numInferenceSteps: Int) {
        val total = trainTimesteps
        val original = Scheduler.num(config, "original_inference_steps").toInt()
        if (original > total) throw IllegalArgumentException("original_inference_steps $original > num_train_timesteps $total")
        if (numInferenceSteps < 1 || numInferenceSteps > original) {
            throw IllegalArgumentException("num_inference_steps must be 1..$original (the original_inference_steps the model was distilled with), got $numInferenceSteps")
        }
        val k = total / original
        val stride = original.toDouble() / numInferenceSteps // numpy.linspace(0, original, n, endpoint=False)
        timesteps = DoubleArray(numInferenceSteps) {
            val pick = Math.floor(it * stride).toInt()
            ((original - pick) * k - 1).toDouble() // the descending origin schedule at that index
        }
        this.numInferenceSteps = numInferenceSteps
        stepIndex = -1
    }

    override fun step(modelOutput: FloatArray, timestep: Double, sample: FloatArray, out: FloatArray, noise: NoiseStream?) {
        checkReady()
        val i0 = currentIndex(timestep)
        val t = timestep.toInt()
        val last = i0 == numInferenceSteps - 1
        val prevT = if (i0 + 1 < timesteps.size) timesteps[i0 + 1].toInt() else t
        val aT = alphaCumprodAt(t)
        val aPrev = alphaCumprodAt(prevT)
        val scaled = t * Scheduler.num(config, "timestep_scaling")
        val cSkip = (SIGMA_DATA * SIGMA_DATA / (scaled * scaled + SIGMA_DATA * SIGMA_DATA)).toFloat()
        val cOut = (scaled / Math.sqrt(scaled * scaled + SIGMA_DATA * SIGMA_DATA)).toFloat()
        val sqA = Math.sqrt(aT).toFloat()
        val sqB = Math.sqrt(1.0 - aT).toFloat()
        val clip = config["clip_sample"] == true
        val r = if (clip) Scheduler.num(config, "clip_sample_range").toFloat() else 0f
        for (i in out.indices) {
            val s = sample[i]
            val m = modelOutput[i]
            var x0 = if (vPrediction) sqA * s - sqB * m else (s - sqB * m) / sqA
            if (clip) x0 = Math.min(Math.max(x0, -r), r)
            out[i] = cOut * x0 + cSkip * s
        }
        stepIndex = i0 + 1
        if (last) return
        val stream = noise ?: throw IllegalArgumentException("LCMScheduler re-noises between steps: pass a NoiseStream")
        if (noiseBuffer.size != out.size) noiseBuffer = FloatArray(out.size)
        stream.next(noiseBuffer)
        val cX = Math.sqrt(aPrev).toFloat()
        val cN = Math.sqrt(1.0 - aPrev).toFloat()
        for (i in out.indices) out[i] = cX * out[i] + cN * noiseBuffer[i]
    }

    companion object {
        const val SIGMA_DATA = 0.5
        val DEFAULTS: Map<String, Any?> = Scheduler.COMMON_DEFAULTS + mapOf(
            "beta_start" to 0.00085, "beta_end" to 0.012, "beta_schedule" to "scaled_linear",
            "original_inference_steps" to 50.0, "clip_sample" to false, "clip_sample_range" to 1.0,
            "set_alpha_to_one" to true, "thresholding" to false, "timestep_spacing" to "leading",
            "timestep_scaling" to 10.0, "rescale_betas_zero_snr" to false
        )
    }
}

/** Registry: name -> scheduler, and diffusers' `_class_name` -> scheduler. */
object Schedulers {
    val NAMES = listOf("pndm", "ddim", "euler", "dpm++", "lcm")
    private val CLASS_NAMES = mapOf(
        "PNDMScheduler" to "pndm", "DDIMScheduler" to "ddim",
        "EulerDiscreteScheduler" to "euler", "DPMSolverMultistepScheduler" to "dpm++", "LCMScheduler" to "lcm"
    )

    /**
     * Build a scheduler from a diffusers config (the manifest's `scheduler` section).
     * [name] swaps the scheduler class but keeps the config's beta schedule (like
     * `OtherScheduler.from_config`); null uses the config's `_class_name`.
     */
    fun create(config: Map<String, Any?>, name: String? = null): Scheduler {
        val key = name ?: CLASS_NAMES[config["_class_name"]]
            ?: throw UnsupportedSchedulerException("scheduler class ${config["_class_name"]} is not ported; ported: ${CLASS_NAMES.keys}")
        return when (key) {
            "pndm" -> PndmScheduler(config)
            "ddim" -> DdimScheduler(config)
            "euler" -> EulerDiscreteScheduler(config)
            "dpm++" -> DpmSolverMultistepScheduler(config)
            "lcm" -> LcmScheduler(config)
            else -> throw UnsupportedSchedulerException("unknown scheduler '$key'; choose from $NAMES")
        }
    }
}
