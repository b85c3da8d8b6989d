package dev.bksdm.edge.engine

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Rule
import org.junit.Test
import org.junit.rules.TemporaryFolder
import java.io.File

/** Manifest parsing and sha256/size verification on a small fake bundle. */
class BundleTest {
    @get:Rule
    val tmp = TemporaryFolder()

    private val files = mapOf(
        "text_encoder/model.onnx" to "te",
        "unet/model.onnx" to "unet weights",
        "vae_decoder/model.onnx" to "decoder",
        "tokenizer/vocab.json" to Golden.text("tokenizer/vocab.json"),
        "tokenizer/merges.txt" to Golden.text("tokenizer/merges.txt")
    )

    // Upper-case digests must be accepted too.
    private fun upperHex(h: String) = buildString { for (ch in h) append(if (ch in 'a'..'f') ch - ('a' - 'A') else ch) }

    private fun writeBundle(complete: Boolean = true, extraManifest: String = "", name: String = "bundle"): File {
        val dir = tmp.newFolder(name)
        val entries = ArrayList<String>()
        for ((path, content) in files) {
            val f = File(dir, path)
            f.parentFile.mkdirs()
            f.writeText(content)
            entries.add("\"$path\": {\"sha256\": \"${upperHex(Bundle.sha256Hex(f))}\", \"size\": ${f.length()}}")
        }
        File(dir, "manifest.json").writeText(FakeBundle.manifestJson(complete, entries.joinToString(", "), extraManifest))
        return dir
    }

    @Test
    fun validBundleOpensAndExposesTheManifest() {
        val bundle = Bundle.open(writeBundle())
        val m = bundle.manifest
        assertEquals("onnx", m.format)
        assertEquals(8, m.latentHeight)
        assertEquals(listOf<Int?>(1, 4, 8, 8), m.component("unet").inputs[0].shape)
        assertEquals(null, m.component("text_encoder").inputs[0].shape[0]) // "batch" is dynamic
        assertEquals(0.02, m.component("vae_decoder").inputs[0].quantization!!.scale, 0.0)
        assertEquals(49407, bundle.loadTokenizer().padTokenId)
    }

    @Test
    fun decoderKindIsReadAndUnknownKindsAreRefused() {
        assertEquals("autoencoder-kl", Bundle.open(writeBundle()).manifest.vaeKind) // bundles made before `vae`
        val tiny = Bundle.open(writeBundle(extraManifest = ", \"vae\": {\"kind\": \"autoencoder-tiny\", \"class\": \"AutoencoderTiny\"}", name = "tiny"))
        assertEquals("autoencoder-tiny", tiny.manifest.vaeKind)
        try {
            Bundle.open(writeBundle(extraManifest = ", \"vae\": {\"kind\": \"autoencoder-vq\"}", name = "vq"))
            fail("expected ManifestException")
        } catch (e: ManifestException) {
            assertTrue(e.message!!, e.message!!.contains("autoencoder-vq"))
        }
    }

    @Test
    fun everyMismatchIsReportedAsATypedProblem() {
        val dir = writeBundle()
        File(dir, "unet/model.onnx").writeText("unet weightz") // same size, other hash
        File(dir, "vae_decoder/model.onnx").writeText("decoder, longer")
        File(dir, "text_encoder/model.onnx").delete()
        try {
            Bundle.open(dir)
            fail("expected BundleVerificationException")
        } catch (e: BundleVerificationException) {
            val kinds = e.problems.map { it.path to it.javaClass.simpleName }.toMap()
            assertEquals("HashMismatch", kinds["unet/model.onnx"])
            assertEquals("SizeMismatch", kinds["vae_decoder/model.onnx"])
            assertEquals("Missing", kinds["text_encoder/model.onnx"])
            assertTrue(e.message!!, e.message!!.contains("3 problem(s)"))
        }
        Bundle.open(dir, verify = false) // still readable when asked not to verify
    }

    @Test
    fun badManifestsFailWithAMessage() {
        val cases = listOf(
            writeBundle(complete = false) to "incomplete",
            File(tmp.newFolder("empty"), "") to "no manifest.json"
        )
        for ((dir, expected) in cases) {
            try {
                Bundle.open(dir)
                fail("expected ManifestException for $expected")
            } catch (e: ManifestException) {
                assertTrue(e.message!!, e.message!!.contains(expected))
            }
        }
        val garbage = tmp.newFolder("garbage")
        File(garbage, "manifest.json").writeText("{\"format_version\": 1,")
        try {
            Bundle.open(garbage)
            fail("expected ManifestException")
        } catch (e: ManifestException) {
            assertTrue(e.message!!, e.message!!.contains("not valid JSON"))
        }
    }

    @Test
    fun pathsThatEscapeTheBundleAreRejected() {
        try {
            Manifest.parse(FakeBundle.manifestJson(true, "\"../../etc/passwd\": {\"sha256\": \"00\", \"size\": 1}", ""))
            fail("expected ManifestException")
        } catch (e: ManifestException) {
            assertTrue(e.message!!, e.message!!.contains("escapes"))
        }
    }

    @Test
    fun quantizationRoundTripsAndSaturates() {
        val q = Quantization(0.5, -3, DType.INT8)
        val src = floatArrayOf(0f, 1f, -1.25f, 1000f, -1000f)
        val bytes = ByteArray(src.size)
        q.quantize(src, bytes)
        assertEquals(listOf<Byte>(-3, -1, -5, 127, -128), bytes.toList()) // rint(-2.5) = -2, then saturation
        val back = FloatArray(src.size)
        q.dequantize(bytes, back)
        assertEquals(listOf(0f, 1f, -1f, 65f, -62.5f), back.toList())
    }
}

/** A manifest for an 64x64 image (8x8 latents), tiny hidden size 16, sequence length 77. */
object FakeBundle {
    /** An LCM bundle's differences: LCMScheduler, a 2-D timestep_cond U-Net input and the guidance embedding. */
    private const val LCM_SCHEDULER = """{"_class_name": "LCMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
                       "beta_end": 0.012, "beta_schedule": "scaled_linear", "original_inference_steps": 25,
                       "set_alpha_to_one": false, "timestep_scaling": 10.0, "clip_sample": false}"""
    private const val LCM_COND = """, {"name": "timestep_cond", "shape": [1, 8], "dtype": "float32", "layout": null, "quantization": null}"""
    private const val LCM_GUIDANCE = """"guidance_embedding": {"input": "timestep_cond", "dim": 8, "w": "guidance_scale - 1",
                       "scale": 1000.0, "max_period": 10000.0},"""

    fun manifestJson(complete: Boolean, filesJson: String, extra: String, lcm: Boolean = false): String = """
        {"format_version": 1, "complete": $complete, "format": "onnx", "precision": "fp32",
         "source": {"family": "sd-v1"},
         "image": {"height": 64, "width": 64, "batch": 1, "vae_scale_factor": 8, "latent_channels": 4},
         "latent_scaling_factor": 0.18215, "vae_decoder_input_scaled": false, "vae_decoder_output_range": [-1, 1],
         "prediction_type": "epsilon",
         "scheduler": ${if (lcm) LCM_SCHEDULER else """{"_class_name": "PNDMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
                       "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1,
                       "set_alpha_to_one": false, "skip_prk_steps": true, "clip_sample": false}"""},
         ${if (lcm) LCM_GUIDANCE else ""}
         "tokenizer": {"vocab": "tokenizer/vocab.json", "merges": "tokenizer/merges.txt", "max_length": 77,
                       "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407},
         "components": {
           "text_encoder": {"file": "text_encoder/model.onnx", "precision": "fp32",
             "inputs": [{"name": "input_ids", "shape": ["batch", 77], "dtype": "int32", "layout": null, "quantization": null}],
             "outputs": [{"name": "last_hidden_state", "shape": [1, 77, 16], "dtype": "float32", "layout": null, "quantization": null}]},
           "unet": {"file": "unet/model.onnx", "precision": "fp32",
             "inputs": [{"name": "sample", "shape": [1, 4, 8, 8], "dtype": "float32", "layout": "NCHW", "quantization": null},
                        {"name": "timestep", "shape": [1], "dtype": "int64", "layout": null, "quantization": null},
                        {"name": "encoder_hidden_states", "shape": [1, 77, 16], "dtype": "float32", "layout": null, "quantization": null}${if (lcm) LCM_COND else ""}],
             "outputs": [{"name": "out_sample", "shape": [1, 4, 8, 8], "dtype": "float32", "layout": "NCHW", "quantization": null}]},
           "vae_decoder": {"file": "vae_decoder/model.onnx", "precision": "int8",
             "inputs": [{"name": "latent_sample", "shape": [1, 4, 8, 8], "dtype": "float32", "layout": "NCHW",
                         "quantization": {"scale": 0.02, "zero_point": 0, "dtype": "int8"}}],
             "outputs": [{"name": "sample", "shape": [1, 3, 64, 64], "dtype": "float32", "layout": "NCHW", "quantization": null}]}
         },
         "files": {$filesJson}$extra}
    """.trimIndent()
}
