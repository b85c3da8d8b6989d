package dev.bksdm.edge.engine

/** Guidance and latent / image conversions, in float32 like `bksdm_edge/runtime/image.py`. */
object ImageOps {
    /** out = uncond + g * (cond - uncond); [out] may be either input. */
    fun classifierFreeGuidance(uncond: FloatArray, cond: FloatArray, guidanceScale: Float, out: FloatArray) {
        require(uncond.size == cond.size && cond.size == out.size) { "size mismatch" }
        for (i in out.indices) out[i] = uncond[i] + guidanceScale * (cond[i] - uncond[i])
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
 * Box-Muller normals. The same seed gives the same latents here and in Python.
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

    /** Fill [out] with standard normal samples from [seed] (a 64-bit pattern; Python takes seed mod 2^64). */
    fun gaussian(seed: Long, out: FloatArray) {
        var i = 0
        var k = 1L
        while (i < out.size) {
            val u1 = 1.0 - uniform(seed, k)
            val u2 = uniform(seed, k + 1)
            k += 2
            val radius = Math.sqrt(-2.0 * Math.log(u1))
            val angle = 2.0 * Math.PI * u2
            out[i++] = (radius * Math.cos(angle)).toFloat()
            if (i < out.size) out[i++] = (radius * Math.sin(angle)).toFloat()
        }
    }
}
