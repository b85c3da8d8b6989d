package dev.bksdm.edge.engine

/** Guidance and latent / image conversions, in float32 like `bksdm_edge/runtime/image.py`. */
object ImageOps {
    /** out = uncond + g * (cond - uncond); [out] may be either input. */
    fun classifierFreeGuidance(uncond: FloatArray, cond: FloatArray, guidanceScale: Float, out: FloatArray) {
        require(uncond.size == cond.size && cond.size == out.size) { "size mismatch" }
        for (i in out.indices) out[i] = uncond[i] + guidanceScale * (cond[i] - uncond[i])
    }

    /**
     * The LCM guidance embedding of [w] (= guidance_scale - 1) into [out] (its size is the U-Net's
     * time_cond_proj_dim): sin then cos of 1000·w·f_i, f_i = exp(-i·ln(10000)/(dim/2 - 1)), zero-padded to an
     * odd size. Products in float32, exp/sin/cos in double then rounded, as `runtime/image.py` does.
     */
    fun guidanceScaleEmbedding(w: Float, out: FloatArray) {
        val dim = out.size
        val half = dim / 2
        require(half >= 2) { "guidance embedding size must be >= 4, is $dim" }
        val scaled = w * 1000f
        val step = Math.log(10000.0).toFloat() / (half - 1).toFloat()
        for (i in 0 until half) {
            val freq = Math.exp((i.toFloat() * -step).toDouble()).toFloat()
            val angle = (scaled * freq).toDouble()
            out[i] = Math.sin(angle).toFloat()
            out[half + i] = Math.cos(angle).toFloat()
        }
        if (dim % 2 == 1) out[dim - 1] = 0f
    }

    /** Undo the VAE latent scaling before the decoder unless the exported decoder does it. */
    fun latentsForDecoder(latents: FloatArray, scalingFactor: Double, decoderInputScaled: Boolean, out: FloatArray) {
        val s = scalingFactor.toFloat()
        for (i in out.indices) out[i] = if (decoderInputScaled) latents[i] else latents[i] / s
    }

    /** One channel value: clip((v - lo) / (hi - lo), 0, 1) * 255, rounded half to even. */
    fun toByte(v: Float, lo: Float, hi: Float): Int {
        var x = (v - lo) / (hi - lo)
        if (x < 0f) x = 0f
        if (x > 1f) x = 1f // NaN stays NaN and becomes 0 below
        val r = Math.rint((x * 255f).toDouble())
        return if (r >= 0.0) r.toInt() else 0
    }

    /**
     * Decoder output (first image of the batch; NCHW planes, or NHWC when [nhwc]) to
     * packed ARGB_8888 pixels (alpha 255), the format of Android's Bitmap.setPixels.
     */
    fun decoderOutputToArgb(decoded: FloatArray, height: Int, width: Int, lo: Float, hi: Float, nhwc: Boolean, out: IntArray) {
        val plane = height * width
        require(decoded.size >= 3 * plane && out.size >= plane) { "buffers too small for ${height}x$width" }
        for (p in 0 until plane) {
            val r: Int
            val g: Int
            val b: Int
            if (nhwc) {
                r = toByte(decoded[3 * p], lo, hi)
                g = toByte(decoded[3 * p + 1], lo, hi)
                b = toByte(decoded[3 * p + 2], lo, hi)
            } else {
                r = toByte(decoded[p], lo, hi)
                g = toByte(decoded[plane + p], lo, hi)
                b = toByte(decoded[2 * plane + p], lo, hi)
            }
            out[p] = (0xFF shl 24) or (r shl 16) or (g shl 8) or b
        }
    }
}

/**
 * The portable seeded Gaussian of `bksdm_edge/runtime/noise.py`: SplitMix64 uniforms,
 * Box-Muller normals (cosine first). A seed defines one endless stream of normals; the same
 * seed gives the same latents (and the same LCM re-noising noise) here and in Python.
 */
object Noise {
    private const val GOLDEN = -0x61c8864680b583ebL // 0x9E3779B97F4A7C15
    private const val MIX1 = -0x40a7b892e31b1a47L // 0xBF58476D1CE4E5B9
    private const val MIX2 = -0x6b2fb644ecceee15L // 0x94D049BB133111EB
    private const val TWO_POW_MINUS_53 = 1.0 / (1L shl 53)

    /** The [k]-th (1-based) SplitMix64 output from [seed]. */
    fun splitmix64(seed: Long, k: Long): Long {
        var z = seed + k * GOLDEN
        z = (z xor (z ushr 30)) * MIX1
        z = (z xor (z ushr 27)) * MIX2
        return z xor (z ushr 31)
    }

    private fun uniform(seed: Long, k: Long): Double = (splitmix64(seed, k) ushr 11).toDouble() * TWO_POW_MINUS_53

    /** Fill [out] with the first normals of [seed]'s stream (a 64-bit pattern; Python takes seed mod 2^64). */
    fun gaussian(seed: Long, out: FloatArray) = normals(seed, 0L, out)

    /** Fill [out] with normals [start], [start] + 1, ... of [seed]'s stream. */
    fun normals(seed: Long, start: Long, out: FloatArray) {
        var i = 0
        var j = start
        while (i < out.size) {
            val k = 2 * (j / 2) + 1 // the pair's first (1-based) SplitMix64 output
            val u1 = 1.0 - uniform(seed, k)
            val u2 = uniform(seed, k + 1)
            val radius = Math.sqrt(-2.0 * Math.log(u1))
            val angle = 2.0 * Math.PI * u2
            if (j % 2 == 0L) {
                out[i++] = (radius * Math.cos(angle)).toFloat()
                j++
                if (i == out.size) break
            }
            out[i++] = (radius * Math.sin(angle)).toFloat()
            j++
        }
    }
}

/** Consecutive normals of one seed's stream (Python's `NoiseStream`): initial latents, then scheduler noise. */
class NoiseStream(val seed: Long) {
    var position = 0L
        private set

    /** Fill [out] with the next [out].size normals. */
    fun next(out: FloatArray) {
        Noise.normals(seed, position, out)
        position += out.size
    }
}
