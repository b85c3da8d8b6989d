package dev.bksdm.edge.engine

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertTrue
import org.junit.Test

/** The denoising loop over fake runners: call pattern, progress, buffer reuse, determinism. */
class PipelineTest {
    private val files = listOf(
        "text_encoder/model.onnx", "unet/model.onnx", "vae_decoder/model.onnx", "tokenizer/vocab.json", "tokenizer/merges.txt"
    ).joinToString(", ") { "\"$it\": {\"sha256\": \"00\", \"size\": 1}" }
    private val manifest = Manifest.parse(FakeBundle.manifestJson(true, files, ""))
    private val lcmManifest = Manifest.parse(FakeBundle.manifestJson(true, files, "", lcm = true))
    private val tokenizer = ClipTokenizer.fromText(Golden.text("tokenizer/vocab.json"), Golden.text("tokenizer/merges.txt"))

    /** Embeds token ids as a deterministic pattern; records the inputs it saw. */
    private class FakeTextEncoder : ModelRunner {
        val out = FloatTensor(intArrayOf(1, 77, 16), FloatArray(77 * 16))
        val seen = ArrayList<IntArray>()
        override fun run(inputs: Map<String, Tensor>): Map<String, Tensor> {
            val ids = (inputs["input_ids"] as IntTensor).data
            seen.add(ids.copyOf())
            for (i in out.data.indices) out.data[i] = (ids[i / 16] % 97) / 97f - 0.5f + (i % 16) * 0.01f
            return mapOf("last_hidden_state" to out) // the same buffer every call, like a real runner
        }
        override fun close() {}
    }

    /** eps = 0.1 * sample + mean(context) + 1e-4 * t (+ 0.01 * mean(timestep_cond) when the input exists). */
    private class FakeUnet : ModelRunner {
        val out = FloatTensor(intArrayOf(1, 4, 8, 8), FloatArray(256))
        var calls = 0
        val timesteps = ArrayList<Long>()
        val conds = ArrayList<FloatArray>()
        override fun run(inputs: Map<String, Tensor>): Map<String, Tensor> {
            calls++
            val x = (inputs["sample"] as FloatTensor).data
            val t = (inputs["timestep"] as LongTensor).data[0]
            timesteps.add(t)
            val ctx = (inputs["encoder_hidden_states"] as FloatTensor).data
            var mean = 0.0
            for (v in ctx) mean += v
            mean /= ctx.size
            val cond = (inputs["timestep_cond"] as FloatTensor?)?.data
            if (cond != null) {
                conds.add(cond.copyOf())
                mean += 0.01 * cond.average()
            }
            for (i in x.indices) out.data[i] = (0.1f * x[i] + mean + 1e-4 * t).toFloat()
            return mapOf("out_sample" to out)
        }
        override fun close() {}
    }

    /** Upsamples channel k of the latents to RGB channel k (k < 3), scaled into [-1, 1]. */
    private class FakeDecoder : ModelRunner {
        val out = FloatTensor(intArrayOf(1, 3, 64, 64), FloatArray(3 * 64 * 64))
        override fun run(inputs: Map<String, Tensor>): Map<String, Tensor> {
            val z = (inputs["latent_sample"] as FloatTensor).data
            for (ch in 0 until 3) for (y in 0 until 64) for (x in 0 until 64) {
                out.data[ch * 4096 + y * 64 + x] = Math.tanh(z[ch * 64 + (y / 8) * 8 + x / 8] * 0.18215).toFloat()
            }
            return mapOf("sample" to out)
        }
        override fun close() {}
    }

    private fun pipeline(te: FakeTextEncoder = FakeTextEncoder(), unet: FakeUnet = FakeUnet(), peak: Long = 123L, m: Manifest = manifest) =
        DiffusionPipeline(m, tokenizer, te, unet, FakeDecoder()) { peak }

    @Test
    fun guidedRunCallsTheUnetTwicePerStepAndReportsProgress() {
        val te = FakeTextEncoder()
        val unet = FakeUnet()
        val progress = ArrayList<StepProgress>()
        val result = pipeline(te, unet).generate(GenerationRequest("a photo of a cat", steps = 5, guidanceScale = 7.5f, seed = 1L), { progress.add(it) })
        assertEquals(2, te.seen.size) // prompt and negative prompt
        assertArrayEquals(tokenizer.encode("a photo of a cat"), te.seen[0])
        assertArrayEquals(tokenizer.encode(""), te.seen[1])
        val timesteps = Schedulers.create(manifest.scheduler).also { it.setTimesteps(5) }.timesteps
        assertEquals(2 * timesteps.size, unet.calls)
        assertEquals(timesteps.map { it.toLong() }.flatMap { listOf(it, it) }, unet.timesteps)
        assertEquals((1..timesteps.size).toList(), progress.map { it.step })
        assertTrue(progress.all { it.totalSteps == timesteps.size && it.stepMillis >= 0 })
        assertEquals(64 * 64, result.argb.size)
        assertEquals(123L, result.peakMemoryBytes)
        assertEquals(timesteps.size, result.stepMillis.size)
        assertTrue(result.argb.all { (it ushr 24) == 0xFF })
    }

    @Test
    fun sameSeedSameImageAcrossRunsAndSchedulers() {
        val p = pipeline()
        val a = p.generate(GenerationRequest("red car", steps = 4, seed = 42L))
        val b = p.generate(GenerationRequest("red car", steps = 4, seed = 42L)) // buffers reused
        val c = p.generate(GenerationRequest("red car", steps = 4, seed = 43L))
        assertArrayEquals(a.argb, b.argb)
        assertFalse(a.argb.contentEquals(c.argb))
        for (name in Schedulers.NAMES) {
            val r = p.generate(GenerationRequest("red car", steps = 3, seed = 42L, scheduler = name))
            assertEquals(64 * 64, r.argb.size)
        }
    }

    @Test
    fun guidanceOneSkipsTheUnconditionalPass() {
        val te = FakeTextEncoder()
        val unet = FakeUnet()
        pipeline(te, unet).generate(GenerationRequest("x", steps = 3, guidanceScale = 1f, scheduler = "ddim"))
        assertEquals(1, te.seen.size)
        assertEquals(3, unet.calls)
    }

    @Test
    fun lcmBundleEmbedsTheGuidanceAndRunsOneRowPerStep() {
        val te = FakeTextEncoder()
        val unet = FakeUnet()
        val p = pipeline(te, unet, m = lcmManifest)
        val result = p.generate(GenerationRequest("a photo of a cat", guidanceScale = 8f, seed = 3L))
        val scheduler = Schedulers.create(lcmManifest.scheduler)
        assertTrue(scheduler is LcmScheduler)
        scheduler.setTimesteps(scheduler.defaultSteps)
        assertEquals(1, te.seen.size) // no negative branch
        assertEquals(scheduler.timesteps.size, unet.calls) // default 4 steps, one U-Net call each
        assertEquals(scheduler.timesteps.map { it.toLong() }, unet.timesteps)
        val want = FloatArray(8)
        ImageOps.guidanceScaleEmbedding(7f, want)
        for (cond in unet.conds) assertArrayEquals(want, cond, 0f)
        assertEquals(scheduler.timesteps.size, result.stepMillis.size)
        // Same seed, same image (latents and re-noising come from one stream); another guidance, another image.
        assertArrayEquals(result.argb, p.generate(GenerationRequest("a photo of a cat", guidanceScale = 8f, seed = 3L)).argb)
        assertFalse(result.argb.contentEquals(p.generate(GenerationRequest("a photo of a cat", guidanceScale = 2f, seed = 3L)).argb))
        assertFalse(result.argb.contentEquals(p.generate(GenerationRequest("a photo of a cat", guidanceScale = 8f, seed = 4L)).argb))
    }

    @Test(expected = IllegalArgumentException::class)
    fun lcmBundleRefusesANegativePrompt() {
        pipeline(m = lcmManifest).generate(GenerationRequest("x", negativePrompt = "blurry"))
    }

    @Test
    fun lcmManifestWithoutItsInputIsRefused() {
        val broken = FakeBundle.manifestJson(true, files, "", lcm = true).replace("\"input\": \"timestep_cond\"", "\"input\": \"w_emb\"")
        try {
            Manifest.parse(broken)
            org.junit.Assert.fail("expected ManifestException")
        } catch (e: ManifestException) {
            assertTrue(e.message!!, e.message!!.contains("w_emb"))
        }
    }

    @Test(expected = GenerationCancelledException::class)
    fun cancellationStopsTheLoop() {
        var polls = 0
        pipeline().generate(GenerationRequest("x", steps = 10), null, { ++polls > 2 })
    }
}
