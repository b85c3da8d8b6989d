package dev.bksdm.edge.engine

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

class ImageGoldenTest {
    private val cases = Golden.cases(Golden.load("image.json"))

    private fun kind(k: String) = cases.filter { it["kind"] == k }

    @Test
    fun guidanceIsBitExact() {
        for (case in kind("cfg")) {
            val u = Golden.floats(case["uncond"])
            val c = Golden.floats(case["cond"])
            val out = FloatArray(u.size)
            ImageOps.classifierFreeGuidance(u, c, (case["guidance_scale"] as Double).toFloat(), out)
            assertArrayEquals(Golden.floats(case["out"]), out, 0f)
        }
        assertEquals(2, kind("cfg").size)
    }

    @Test
    fun guidanceEmbeddingMatchesPython() {
        val emb = kind("guidance_embedding")
        assertEquals(5, emb.size)
        for (case in emb) {
            val expected = Golden.floats(case["out"])
            val out = FloatArray((case["dim"] as Double).toInt())
            ImageOps.guidanceScaleEmbedding((case["w"] as Double).toFloat(), out)
            Golden.assertClose("guidance embedding w=${case["w"]} dim=${out.size}", expected, out, 1e-6)
        }
    }

    @Test
    fun latentUnscalingIsBitExact() {
        for (case in kind("latents_for_decoder")) {
            val l = Golden.floats(case["latents"])
            val out = FloatArray(l.size)
            ImageOps.latentsForDecoder(l, case["scaling_factor"] as Double, case["decoder_input_scaled"] as Boolean, out)
            assertArrayEquals(Golden.floats(case["out"]), out, 0f)
        }
    }

    @Test
    fun decoderKindsAndTheirLatentScalingMatchPython() {
        val decoderCases = kind("vae_decoder")
        assertEquals(Manifest.VAE_DECODER_KINDS.size + 2, decoderCases.size) // + no kind, + an unknown kind
        for (case in decoderCases) {
            val expected = case["vae_kind"] as String?
            if (expected == null) {
                try {
                    Manifest.parseVaeKind(case["manifest_vae"])
                    fail("kind ${case["manifest_vae"]} should be refused")
                } catch (e: ManifestException) {
                    assertTrue(e.message!!, e.message!!.contains("not supported"))
                }
                continue
            }
            assertEquals(expected, Manifest.parseVaeKind(case["manifest_vae"]))
            val l = Golden.floats(case["latents"])
            val out = FloatArray(l.size)
            ImageOps.latentsForDecoder(l, case["scaling_factor"] as Double, case["decoder_input_scaled"] as Boolean, out)
            assertArrayEquals(Golden.floats(case["out"]), out, 0f)
        }
    }

    @Test
    fun decoderOutputToRgbIsExact() {
        val rgbCases = kind("rgb")
        assertEquals(2, rgbCases.size)
        for (case in rgbCases) {
            val shape = Golden.ints(case["shape"])
            val (hgt, wid) = Pair(shape[2], shape[3])
            val decoded = Golden.floats(case["decoded"])
            val range = Golden.doubles(case["output_range"])
            val argb = IntArray(hgt * wid)
            ImageOps.decoderOutputToArgb(decoded, hgt, wid, range[0].toFloat(), range[1].toFloat(), false, argb)
            val expected = Golden.ints(case["rgb_hwc"])
            for (p in 0 until hgt * wid) {
                assertEquals("alpha", 0xFF, (argb[p] ushr 24) and 0xFF)
                assertEquals("r[$p]", expected[3 * p], (argb[p] shr 16) and 0xFF)
                assertEquals("g[$p]", expected[3 * p + 1], (argb[p] shr 8) and 0xFF)
                assertEquals("b[$p]", expected[3 * p + 2], argb[p] and 0xFF)
            }
            // The same image in NHWC gives the same pixels.
            val nhwc = FloatArray(decoded.size)
            Layout.nchwToNhwc(decoded, 1, 3, hgt, wid, nhwc)
            val argb2 = IntArray(hgt * wid)
            ImageOps.decoderOutputToArgb(nhwc, hgt, wid, range[0].toFloat(), range[1].toFloat(), true, argb2)
            assertArrayEquals(argb, argb2)
        }
    }

    @Test
    fun noiseMatchesPython() {
        val noise = kind("noise")
        assertEquals(3, noise.size)
        for (case in noise) {
            val seed = java.lang.Long.parseUnsignedLong(case["seed"] as String)
            val expected = Golden.floats(case["out"])
            val out = FloatArray(expected.size)
            Noise.gaussian(seed, out)
            Golden.assertClose("noise seed ${case["seed"]}", expected, out, 1e-6)
        }
        assertTrue(Noise.splitmix64(0L, 1L) == -0x1ddf57c684e23251L) // 0xE220A8397B1DCDAF
    }

    @Test
    fun noiseStreamDrawsConsecutivePiecesLikePython() {
        val case = kind("noise_stream").single()
        val stream = NoiseStream(java.lang.Long.parseUnsignedLong(case["seed"] as String))
        val parts = case["out"] as List<*>
        for ((k, part) in parts.withIndex()) {
            val expected = Golden.floats(part)
            val out = FloatArray(expected.size)
            stream.next(out)
            Golden.assertClose("noise stream piece $k", expected, out, 1e-6)
        }
        assertEquals(Golden.ints(case["sizes"]).sum().toLong(), stream.position)
    }
}
