package dev.bksdm.edge.engine

import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Rule
import org.junit.Test
import org.junit.rules.TemporaryFolder
import java.io.File

/**
 * The manifest the Python exporter writes (golden/bundle/manifest.json comes from the real manifest builder,
 * `bksdm_edge/export/manifest.py`, via `python -m bksdm_edge.runtime.golden`): the bundle verifies and every
 * field the engine reads equals the JSON the exporter wrote, so a change to the builder shows up here.
 */
class ManifestGoldenTest {
    @get:Rule
    val tmp = TemporaryFolder()

    @Suppress("UNCHECKED_CAST")
    private fun obj(v: Any?) = v as Map<String, Any?>

    private fun int(v: Any?) = (v as Double).toInt()

    /** The golden bundle copied out of the test resources (verification reads real files). */
    private fun goldenBundle(raw: Map<String, Any?>): File {
        val dir = tmp.newFolder("bundle")
        File(dir, "manifest.json").writeText(Golden.text("bundle/manifest.json"))
        for (path in obj(raw["files"]).keys) {
            val f = File(dir, path)
            f.parentFile.mkdirs()
            f.writeText(Golden.text("bundle/$path"))
        }
        return dir
    }

    @Test
    fun manifestWrittenByThePythonExporterVerifiesAndParses() {
        val raw = Golden.load("bundle/manifest.json")
        val bundle = Bundle.open(goldenBundle(raw)) // sha256 and size of every listed file
        val m = bundle.manifest
        val image = obj(raw["image"])
        assertEquals(int(raw["format_version"]), m.formatVersion)
        assertEquals(raw["format"], m.format)
        assertEquals(raw["precision"], m.precision)
        assertEquals(int(image["height"]), m.height)
        assertEquals(int(image["width"]), m.width)
        assertEquals(int(image["vae_scale_factor"]), m.vaeScaleFactor)
        assertEquals(int(image["latent_channels"]), m.latentChannels)
        assertEquals(raw["latent_scaling_factor"] as Double, m.latentScalingFactor, 0.0)
        assertEquals(raw["vae_decoder_input_scaled"], m.vaeDecoderInputScaled)
        assertEquals((raw["vae_decoder_output_range"] as List<*>).map { it as Double }, m.vaeDecoderOutputRange.toList())
        assertEquals(raw["prediction_type"], m.predictionType)
        assertEquals(raw["scheduler"], m.scheduler)
        assertEquals(raw["source"], m.source)
        assertEquals(obj(raw["vae"])["kind"], m.vaeKind)
        assertNull(m.guidanceEmbedding)

        val tok = obj(raw["tokenizer"])
        assertEquals(tok["vocab"], m.tokenizer.vocab)
        assertEquals(tok["merges"], m.tokenizer.merges)
        assertEquals(int(tok["max_length"]), m.tokenizer.maxLength)
        assertEquals(int(tok["bos_token_id"]), m.tokenizer.bosTokenId)
        assertEquals(int(tok["eos_token_id"]), m.tokenizer.eosTokenId)
        assertEquals(int(tok["pad_token_id"]), m.tokenizer.padTokenId)
        assertEquals(int(tok["pad_token_id"]), bundle.loadTokenizer().padTokenId)

        val components = obj(raw["components"])
        assertEquals(components.keys, m.components.keys)
        for ((name, value) in components) {
            val c = obj(value)
            val parsed = m.component(name)
            assertEquals(c["file"], parsed.file)
            assertEquals(c["precision"], parsed.precision)
            for ((kind, ios) in listOf("inputs" to parsed.inputs, "outputs" to parsed.outputs)) {
                val expected = (c[kind] as List<*>).map { obj(it) }
                assertEquals("$name.$kind", expected.map { it["name"] }, ios.map { it.name })
                // a named (dynamic) dimension, e.g. the ONNX U-Net's "batch" axis, parses as null
                assertEquals("$name.$kind", expected.map { (it["shape"] as List<*>).map { d -> (d as? Double)?.toInt() } }, ios.map { it.shape })
                assertEquals("$name.$kind", expected.map { DType.parse(it["dtype"] as String) }, ios.map { it.dtype })
                assertEquals("$name.$kind", expected.map { it["layout"] }, ios.map { it.layout })
            }
        }
        assertEquals(obj(raw["files"]).keys, m.files.keys)
    }
}
