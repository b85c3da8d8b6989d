package dev.bksdm.edge.engine

/**
 * What to generate. [scheduler] is a registry name (pndm, ddim, euler, dpm++, lcm) or null for the bundle's;
 * [steps] null takes the scheduler's default (25; LCM 4). For a latent consistency bundle [guidanceScale] is the
 * scale its U-Net embeds and [negativePrompt] must stay empty (there is no negative branch).
 */
class GenerationRequest(
    val prompt: String,
    val negativePrompt: String = "",
    val steps: Int? = null,
    val guidanceScale: Float = 7.5f,
    val seed: Long = 0L,
    val scheduler: String? = null
)

/** Reported after each denoising step. */
class StepProgress(val step: Int, val totalSteps: Int, val timestep: Double, val stepMillis: Double, val elapsedMillis: Double)

class GenerationResult(
    /** ARGB_8888 pixels, row-major, [width] x [height]. */
    val argb: IntArray,
    val width: Int,
    val height: Int,
    val textEncoderMillis: Double,
    val stepMillis: DoubleArray,
    val decoderMillis: Double,
    val totalMillis: Double,
    /** Largest value the memory sampler returned during the run, or -1 without a sampler. */
    val peakMemoryBytes: Long
)

class GenerationCancelledException : Exception("generation cancelled")

/** A model's inputs/outputs do not fit what the pipeline needs. */
class ModelInterfaceException(message: String) : Exception(message)

/**
 * Text-to-image over three [ModelRunner]s described by a bundle [manifest].
 *
 * Models are loaded by the caller once; this class allocates every buffer once, in the
 * constructor, and reuses them for every step and every generation. Input and output
 * names, shapes, dtypes and layouts come from the manifest: the U-Net inputs are told
 * apart by rank (4-D sample, 0/1-D timestep, 3-D text embeddings). With guidance > 1
 * the U-Net runs on the unconditional and the conditional embeddings, batched when its
 * sample batch dimension is 2, as two calls when it is 1. A latent consistency bundle
 * (the manifest's `guidance_embedding`) instead feeds the embedded guidance scale to its
 * 2-D `timestep_cond` input and runs one conditional row per step, as diffusers'
 * LatentConsistencyModelPipeline does.
 *
 * Every random number comes from one [NoiseStream] of the seed: the initial latents first,
 * then the noise a stochastic scheduler (LCM) draws between steps, as in Python.
 *
 * [memorySampler] (e.g. the app's native-heap + Java-heap reading) is sampled after each
 * model call to report peak memory.
 */
class DiffusionPipeline(
    val manifest: Manifest,
    val tokenizer: ClipTokenizer,
    private val textEncoder: ModelRunner,
    private val unet: ModelRunner,
    private val vaeDecoder: ModelRunner,
    private val memorySampler: (() -> Long)? = null
) {
    private val teSpec = manifest.component("text_encoder")
    private val unetSpec = manifest.component("unet")
    private val decSpec = manifest.component("vae_decoder")
    private val idsSpec = teSpec.inputs.firstOrNull() ?: throw ModelInterfaceException("text_encoder has no inputs")
    private val hiddenName = teSpec.outputs.firstOrNull()?.name ?: throw ModelInterfaceException("text_encoder has no outputs")
    private val sampleSpec = unetSpec.inputs.singleOrNull { it.shape.size == 4 } ?: throw ModelInterfaceException("unet needs exactly one 4-D input (sample)")
    private val timestepSpec = unetSpec.inputs.singleOrNull { it.shape.size <= 1 } ?: throw ModelInterfaceException("unet needs exactly one 0-D/1-D input (timestep)")
    private val contextSpec = unetSpec.inputs.singleOrNull { it.shape.size == 3 } ?: throw ModelInterfaceException("unet needs exactly one 3-D input (encoder_hidden_states)")
    private val guidanceSpec = manifest.guidanceEmbedding
    private val condSpec = guidanceSpec?.let { g -> unetSpec.inputs.single { it.name == g.input } }
    private val unetOutName = unetSpec.outputs.firstOrNull()?.name ?: throw ModelInterfaceException("unet has no outputs")
    private val decInSpec = decSpec.inputs.singleOrNull { it.shape.size == 4 } ?: throw ModelInterfaceException("vae_decoder needs one 4-D input")
    private val decOutSpec = decSpec.outputs.firstOrNull() ?: throw ModelInterfaceException("vae_decoder has no outputs")

    private val c = manifest.latentChannels
    private val h = manifest.latentHeight
    private val w = manifest.latentWidth
    private val latentSize = c * h * w
    private val seqLen = tokenizer.maxLength
    private val hiddenDim: Int = contextSpec.shape[2] ?: throw ModelInterfaceException("unet encoder_hidden_states hidden size must be static")
    private val unetBatch: Int = sampleSpec.shape[0] ?: 1
    private val sampleNhwc = sampleSpec.layout == "NHWC"
    private val decInNhwc = decInSpec.layout == "NHWC"
    private val decOutNhwc = decOutSpec.layout == "NHWC"

    // Buffers, allocated once.
    private val latents = FloatArray(latentSize)
    private val scaled = FloatArray(latentSize)
    private val noiseUncond = FloatArray(latentSize)
    private val noiseCond = FloatArray(latentSize)
    private val embCond = FloatArray(seqLen * hiddenDim)
    private val embUncond = FloatArray(seqLen * hiddenDim)
    private val unetSample = FloatArray(unetBatch * latentSize)
    private val unetContext = FloatArray(unetBatch * seqLen * hiddenDim)
    private val decoderIn = FloatArray(latentSize)
    private val decoderInModel = FloatArray(latentSize)
    private val condRow = FloatArray(guidanceSpec?.dim ?: 0)
    private val unetCond = FloatArray(unetBatch * condRow.size)
    private val pixels = IntArray(manifest.height * manifest.width)
    private val idsTensor: Tensor = when (idsSpec.dtype) {
        DType.INT32 -> IntTensor(intArrayOf(1, seqLen), IntArray(seqLen))
        DType.INT64 -> LongTensor(intArrayOf(1, seqLen), LongArray(seqLen))
        else -> throw ModelInterfaceException("text_encoder input '${idsSpec.name}' must be int32 or int64, is ${idsSpec.dtype}")
    }
    private val timestepShape = if (timestepSpec.shape.isEmpty()) IntArray(0) else intArrayOf(timestepSpec.shape[0] ?: 1)
    private val timestepTensor: Tensor = when (timestepSpec.dtype) {
        DType.INT64 -> LongTensor(timestepShape, LongArray(shapeSize(timestepShape)))
        DType.INT32 -> IntTensor(timestepShape, IntArray(shapeSize(timestepShape)))
        DType.FLOAT32, DType.FLOAT16 -> FloatTensor(timestepShape, FloatArray(shapeSize(timestepShape)))
        else -> throw ModelInterfaceException("unet timestep dtype ${timestepSpec.dtype} is not supported")
    }
    private val unetInputs: Map<String, Tensor> = mapOf(
        sampleSpec.name to FloatTensor(
            if (sampleNhwc) intArrayOf(unetBatch, h, w, c) else intArrayOf(unetBatch, c, h, w), unetSample
        ),
        timestepSpec.name to timestepTensor,
        contextSpec.name to FloatTensor(intArrayOf(unetBatch, seqLen, hiddenDim), unetContext)
    ) + (if (condSpec == null) emptyMap() else mapOf(condSpec.name to FloatTensor(intArrayOf(unetBatch, condRow.size), unetCond)))
    private val decoderInputs: Map<String, Tensor> = mapOf(
        decInSpec.name to FloatTensor(if (decInNhwc) intArrayOf(1, h, w, c) else intArrayOf(1, c, h, w), decoderInModel)
    )

    init {
        if (unetBatch != 1 && unetBatch != 2) throw ModelInterfaceException("unet batch must be 1 or 2, is $unetBatch")
        val ls = sampleSpec.concreteShape()
        val expected = if (sampleNhwc) intArrayOf(unetBatch, h, w, c) else intArrayOf(unetBatch, c, h, w)
        for (i in 1..3) if (sampleSpec.shape[i] != null && ls[i] != expected[i]) {
            throw ModelInterfaceException("unet sample shape ${sampleSpec.shape} does not match the manifest image (latents ${c}x${h}x$w)")
        }
    }

    private var peak = -1L

    private fun sampleMemory() {
        val s = memorySampler ?: return
        val v = s()
        if (v > peak) peak = v
    }

    /**
     * Run text encoder, [GenerationRequest.steps] denoising steps and the decoder.
     *
     * @param onStep called after every step (on the calling thread)
     * @param isCancelled polled before every step; true aborts with [GenerationCancelledException]
     */
    fun generate(request: GenerationRequest, onStep: ((StepProgress) -> Unit)? = null, isCancelled: (() -> Boolean)? = null): GenerationResult {
        require(request.steps == null || request.steps >= 1) { "steps must be >= 1" }
        val embedded = guidanceSpec != null
        require(!embedded || request.negativePrompt.isEmpty()) {
            "this bundle's U-Net embeds the guidance scale (a latent consistency model): it has no negative branch, so a negative prompt cannot be used"
        }
        val t0 = System.nanoTime()
        peak = -1L
        sampleMemory()
        val guided = request.guidanceScale > 1f && !embedded

        // 1. Text embeddings (the unconditional one only when guidance is on); an LCM's embedded guidance.
        encode(request.prompt, embCond)
        if (guided) encode(request.negativePrompt, embUncond)
        if (embedded) {
            ImageOps.guidanceScaleEmbedding(request.guidanceScale - 1f, condRow)
            for (b in 0 until unetBatch) System.arraycopy(condRow, 0, unetCond, b * condRow.size, condRow.size)
        }
        val tText = System.nanoTime()

        // 2. Scheduler and initial noise (the first values of the seed's stream; the scheduler draws the rest).
        val scheduler = Schedulers.create(manifest.scheduler, request.scheduler)
        scheduler.setTimesteps(request.steps ?: scheduler.defaultSteps)
        val rng = NoiseStream(request.seed)
        rng.next(latents)
        val sigma0 = scheduler.initNoiseSigma.toFloat()
        for (i in latents.indices) latents[i] *= sigma0

        // 3. Denoising loop.
        val timesteps = scheduler.timesteps
        val stepMillis = DoubleArray(timesteps.size)
        for ((k, t) in timesteps.withIndex()) {
            if (isCancelled != null && isCancelled()) throw GenerationCancelledException()
            val ts = System.nanoTime()
            scheduler.scaleModelInput(latents, t, scaled)
            setTimestep(t)
            if (guided && unetBatch == 2) {
                runUnet2(scaled)
            } else if (guided) {
                runUnet(scaled, embUncond, noiseUncond)
                runUnet(scaled, embCond, noiseCond)
            } else {
                runUnet(scaled, embCond, noiseCond)
            }
            if (guided) ImageOps.classifierFreeGuidance(noiseUncond, noiseCond, request.guidanceScale, noiseCond)
            scheduler.step(noiseCond, t, latents, latents, rng)
            stepMillis[k] = (System.nanoTime() - ts) / 1e6
            onStep?.invoke(StepProgress(k + 1, timesteps.size, t, stepMillis[k], (System.nanoTime() - t0) / 1e6))
        }
        val tLoop = System.nanoTime()

        // 4. Decode to pixels.
        ImageOps.latentsForDecoder(latents, manifest.latentScalingFactor, manifest.vaeDecoderInputScaled, decoderIn)
        if (decInNhwc) Layout.nchwToNhwc(decoderIn, 1, c, h, w, decoderInModel) else System.arraycopy(decoderIn, 0, decoderInModel, 0, latentSize)
        val out = output(vaeDecoder.run(decoderInputs), decOutSpec.name, "vae_decoder")
        sampleMemory()
        val range = manifest.vaeDecoderOutputRange
        ImageOps.decoderOutputToArgb(out, manifest.height, manifest.width, range[0].toFloat(), range[1].toFloat(), decOutNhwc, pixels)
        val tEnd = System.nanoTime()
        return GenerationResult(
            pixels.copyOf(), manifest.width, manifest.height, (tText - t0) / 1e6, stepMillis,
            (tEnd - tLoop) / 1e6, (tEnd - t0) / 1e6, peak
        )
    }

    private fun encode(text: String, into: FloatArray) {
        val ids = tokenizer.encode(text)
        when (idsTensor) {
            is IntTensor -> System.arraycopy(ids, 0, idsTensor.data, 0, seqLen)
            is LongTensor -> for (i in 0 until seqLen) idsTensor.data[i] = ids[i].toLong()
            else -> throw IllegalStateException()
        }
        val hidden = output(textEncoder.run(mapOf(idsSpec.name to idsTensor)), hiddenName, "text_encoder")
        if (hidden.size < into.size) throw ModelInterfaceException("text_encoder output has ${hidden.size} values, expected ${into.size}")
        System.arraycopy(hidden, 0, into, 0, into.size)
        sampleMemory()
    }

    private fun setTimestep(t: Double) {
        // Integer timestep inputs get the value truncated, as numpy's astype (optimum) does.
        when (val tt = timestepTensor) {
            is LongTensor -> java.util.Arrays.fill(tt.data, t.toLong())
            is IntTensor -> java.util.Arrays.fill(tt.data, t.toInt())
            is FloatTensor -> java.util.Arrays.fill(tt.data, t.toFloat())
        }
    }

    private fun putSample(src: FloatArray, batchIndex: Int) {
        val offset = batchIndex * latentSize
        if (sampleNhwc) {
            for (ch in 0 until c) for (p in 0 until h * w) unetSample[offset + p * c + ch] = src[ch * h * w + p]
        } else {
            System.arraycopy(src, 0, unetSample, offset, latentSize)
        }
    }

    private fun takeNoise(out: FloatArray, batchIndex: Int, into: FloatArray) {
        val offset = batchIndex * latentSize
        if (sampleNhwc) {
            for (ch in 0 until c) for (p in 0 until h * w) into[ch * h * w + p] = out[offset + p * c + ch]
        } else {
            System.arraycopy(out, offset, into, 0, latentSize)
        }
    }

    private fun runUnet(sample: FloatArray, context: FloatArray, into: FloatArray) {
        putSample(sample, 0)
        System.arraycopy(context, 0, unetContext, 0, context.size)
        if (unetBatch == 2) { // an unguided call to a batch-2 model: fill both halves alike
            putSample(sample, 1)
            System.arraycopy(context, 0, unetContext, context.size, context.size)
        }
        takeNoise(output(unet.run(unetInputs), unetOutName, "unet"), 0, into)
        sampleMemory()
    }

    private fun runUnet2(sample: FloatArray) {
        putSample(sample, 0)
        putSample(sample, 1)
        System.arraycopy(embUncond, 0, unetContext, 0, embUncond.size)
        System.arraycopy(embCond, 0, unetContext, embUncond.size, embCond.size)
        val out = output(unet.run(unetInputs), unetOutName, "unet")
        takeNoise(out, 0, noiseUncond)
        takeNoise(out, 1, noiseCond)
        sampleMemory()
    }

    private fun output(outputs: Map<String, Tensor>, name: String, component: String): FloatArray {
        val t = outputs[name] ?: outputs.values.singleOrNull()
            ?: throw ModelInterfaceException("$component returned ${outputs.keys}, not '$name'")
        return (t as? FloatTensor)?.data ?: throw ModelInterfaceException("$component output '$name' must be a float tensor")
    }
}
