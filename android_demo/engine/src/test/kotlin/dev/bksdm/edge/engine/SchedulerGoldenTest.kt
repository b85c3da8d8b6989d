package dev.bksdm.edge.engine

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

class SchedulerGoldenTest {
    private val doc = Golden.load("schedulers.json")

    @Suppress("UNCHECKED_CAST")
    private fun config(name: String): Map<String, Any?> = (doc["configs"] as Map<String, Any?>)[name] as Map<String, Any?>

    private fun build(case: Map<String, Any?>): Scheduler {
        val s = Schedulers.create(config(case["config"] as String), case["scheduler"] as String)
        s.setTimesteps((case["num_inference_steps"] as Double).toInt())
        return s
    }

    private fun label(case: Map<String, Any?>) = "${case["scheduler"]}/${case["config"]}/${(case["num_inference_steps"] as Double).toInt()} steps"

    @Test
    fun timestepsSigmasAndAlphasMatchPython() {
        var n = 0
        for (case in Golden.cases(doc)) {
            if (case["kind"] != "schedule") continue
            n++
            val s = build(case)
            val what = label(case)
            Golden.assertClose("$what timesteps", Golden.doubles(case["timesteps"]), s.timesteps, 1e-9)
            assertEquals("$what init_noise_sigma", case["init_noise_sigma"] as Double, s.initNoiseSigma, 1e-4 * (case["init_noise_sigma"] as Double))
            val alphas = DoubleArray(s.timesteps.size) { s.alphasCumprod[s.timesteps[it].toInt()] }
            Golden.assertClose("$what alphas_cumprod", Golden.doubles(case["alphas_cumprod_at_timesteps"]), alphas, 1e-5)
            val expectedSigmas = case["sigmas"]
            if (expectedSigmas != null) Golden.assertClose("$what sigmas", Golden.doubles(expectedSigmas), s.sigmas!!, 1e-5)
            else assertEquals("$what has no sigmas", null, s.sigmas)
        }
        assertTrue("schedule cases present", n >= 5 * 3 * 5 + 4)
    }

    @Test
    fun denoisingRunsMatchPythonStepByStep() {
        var n = 0
        for (case in Golden.cases(doc)) {
            if (case["kind"] != "run") continue
            n++
            val s = build(case)
            val what = label(case)
            val sample = Golden.floats(case["initial_sample"])
            val scaled = FloatArray(sample.size)
            val expectedInputs = case["model_inputs"] as List<*>
            val outputs = case["model_outputs"] as List<*>
            val samples = case["samples"] as List<*>
            val noiseSeed = case["noise_seed"] as String?
            assertEquals("$what draws noise", noiseSeed != null, s.drawsNoise)
            val noise = if (noiseSeed == null) null else NoiseStream(java.lang.Long.parseUnsignedLong(noiseSeed))
            assertEquals("$what step count", samples.size.toLong(), s.timesteps.size.toLong())
            for ((k, t) in s.timesteps.withIndex()) {
                s.scaleModelInput(sample, t, scaled)
                Golden.assertClose("$what step $k model input", Golden.floats(expectedInputs[k]), scaled)
                s.step(Golden.floats(outputs[k]), t, sample, sample, noise) // in place, as the pipeline does
                Golden.assertClose("$what step $k sample", Golden.floats(samples[k]), sample)
            }
        }
        assertTrue("run cases present", n >= 5 * 3 * 2 + 2)
    }

    @Test
    fun lcmNeedsANoiseStreamBeforeItsLastStepAndRefusesTooManySteps() {
        val s = Schedulers.create(config("lcm-ddim25"))
        assertTrue(s is LcmScheduler && s.drawsNoise)
        try {
            s.setTimesteps(26)
            fail("expected IllegalArgumentException")
        } catch (e: IllegalArgumentException) {
            assertTrue(e.message!!, e.message!!.contains("1..25"))
        }
        s.setTimesteps(2)
        val x = FloatArray(4)
        try {
            s.step(x, s.timesteps[0], x, x)
            fail("expected IllegalArgumentException")
        } catch (e: IllegalArgumentException) {
            assertTrue(e.message!!, e.message!!.contains("NoiseStream"))
        }
    }

    @Test
    fun unsupportedConfigsFailWithEveryProblemNamed() {
        val cfg = LinkedHashMap(config("sd-v1"))
        cfg["use_karras_sigmas"] = true
        cfg["rescale_betas_zero_snr"] = true
        try {
            Schedulers.create(cfg, "euler")
            fail("expected UnsupportedSchedulerException")
        } catch (e: UnsupportedSchedulerException) {
            assertTrue(e.message!!, e.message!!.contains("use_karras_sigmas") && e.message!!.contains("rescale_betas_zero_snr"))
        }
        cfg["_class_name"] = "LMSDiscreteScheduler"
        try {
            Schedulers.create(cfg)
            fail("expected UnsupportedSchedulerException")
        } catch (e: UnsupportedSchedulerException) {
            assertTrue(e.message!!, e.message!!.contains("LMSDiscreteScheduler"))
        }
    }

    @Test(expected = IllegalStateException::class)
    fun stepBeforeSetTimestepsFails() {
        val s = Schedulers.create(config("sd-v1"), "ddim")
        val x = FloatArray(4)
        s.step(x, 1.0, x, x)
    }
}
