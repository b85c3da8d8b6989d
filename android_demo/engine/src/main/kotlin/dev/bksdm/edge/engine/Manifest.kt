package dev.bksdm.edge.engine

import java.io.File
import java.io.FileInputStream
import java.security.MessageDigest

/** The manifest is missing, malformed or describes something this engine cannot run. */
class ManifestException(message: String) : Exception(message)

/** One way a bundle file differs from its manifest entry. */
sealed class BundleProblem(val path: String) {
    abstract val message: String

    class Missing(path: String) : BundleProblem(path) {
        override val message get() = "$path: missing"
    }

    class SizeMismatch(path: String, val expected: Long, val actual: Long) : BundleProblem(path) {
        override val message get() = "$path: size $actual bytes, manifest says $expected"
    }

    class HashMismatch(path: String, val expected: String, val actual: String) : BundleProblem(path) {
        override val message get() = "$path: sha256 $actual, manifest says $expected"
    }
}

/** Bundle files do not match the manifest; [problems] lists every mismatch, not just the first. */
class BundleVerificationException(val problems: List<BundleProblem>) :
    Exception("bundle does not match its manifest (${problems.size} problem(s)):\n" + problems.joinToString("\n") { "  " + it.message })

/** A model input or output as the manifest describes it. A dynamic dimension is null in [shape]. */
class IoSpec(
    val name: String,
    val shape: List<Int?>,
    val dtype: DType,
    val layout: String?,
    val quantization: Quantization?
) {
    /** The shape with dynamic dimensions replaced by [fallback]. */
    fun concreteShape(fallback: Int = 1): IntArray = IntArray(shape.size) { shape[it] ?: fallback }
}

class ComponentSpec(val name: String, val file: String, val precision: String, val inputs: List<IoSpec>, val outputs: List<IoSpec>)

class FileEntry(val sha256: String, val size: Long)

class TokenizerSpec(val vocab: String, val merges: String, val maxLength: Int, val bosTokenId: Int, val eosTokenId: Int, val padTokenId: Int)

/**
 * The manifest's `guidance_embedding` (an LCM U-Net): the U-Net input [input] of width [dim] takes
 * [ImageOps.guidanceScaleEmbedding] of guidance_scale - 1 instead of a negative branch.
 */
class GuidanceEmbeddingSpec(val input: String, val dim: Int)

/** manifest.json, format_version 1 (docs/bundle_format.md). */
class Manifest(
    val formatVersion: Int,
    val format: String,
    val precision: String,
    val height: Int,
    val width: Int,
    val vaeScaleFactor: Int,
    val latentChannels: Int,
    val latentScalingFactor: Double,
    val vaeDecoderInputScaled: Boolean,
    val vaeDecoderOutputRange: DoubleArray,
    val predictionType: String,
    val scheduler: Map<String, Any?>,
    /** Non-null for a latent consistency model (its U-Net embeds the guidance scale). */
    val guidanceEmbedding: GuidanceEmbeddingSpec?,
    val tokenizer: TokenizerSpec,
    val components: Map<String, ComponentSpec>,
    val files: Map<String, FileEntry>,
    val source: Map<String, Any?>,
    /** The VAE decoder architecture (manifest `vae.kind`), one of [VAE_DECODER_KINDS]. */
    val vaeKind: String = DEFAULT_VAE_DECODER_KIND
) {
    val latentHeight: Int get() = height / vaeScaleFactor
    val latentWidth: Int get() = width / vaeScaleFactor

    fun component(name: String): ComponentSpec =
        components[name] ?: throw ManifestException("manifest has no '$name' component (has ${components.keys})")

    companion object {
        const val FORMAT_VERSION = 1
        val REQUIRED_COMPONENTS = listOf("text_encoder", "unet", "vae_decoder")

        /**
         * Decoder kinds this engine runs, as `bksdm_edge/runtime/image.py` lists them: SD's AutoencoderKL and the
         * tiny TAESD decoder. The kind names the architecture; the arithmetic comes from latent_scaling_factor (1.0
         * for the tiny decoder), vae_decoder_input_scaled and vae_decoder_output_range. A bundle without `vae` was
         * made before the field existed and holds an AutoencoderKL.
         */
        val VAE_DECODER_KINDS = listOf("autoencoder-kl", "autoencoder-tiny")
        const val DEFAULT_VAE_DECODER_KIND = "autoencoder-kl"

        /** The decoder kind of a manifest's `vae` entry ([vae] null: none); unknown kinds are refused. */
        fun parseVaeKind(vae: Any?): String {
            if (vae == null) return DEFAULT_VAE_DECODER_KIND
            @Suppress("UNCHECKED_CAST")
            val m = vae as? Map<String, Any?> ?: throw ManifestException("manifest 'vae' must be an object")
            val kind = m["kind"] ?: return DEFAULT_VAE_DECODER_KIND
            if (kind !is String || kind !in VAE_DECODER_KINDS) {
                throw ManifestException("the bundle's VAE decoder kind $kind is not supported by this app (it decodes ${VAE_DECODER_KINDS.joinToString()}); update the app")
            }
            return kind
        }

        /** Parse and check a manifest; every problem becomes a [ManifestException] with a message. */
        fun parse(text: String): Manifest {
            val root = try {
                Json.parseObject(text)
            } catch (e: JsonException) {
                throw ManifestException("manifest.json is not valid JSON: ${e.message}")
            }
            val version = root.int("format_version", "manifest")
            if (version != FORMAT_VERSION) throw ManifestException("manifest format_version $version is not supported (this app reads $FORMAT_VERSION)")
            if (root["complete"] != true) throw ManifestException("bundle is incomplete (manifest 'complete' is not true): the export did not finish")
            val image = root.obj("image", "manifest")
            val range = root.list("vae_decoder_output_range", "manifest")
            if (range.size != 2 || range[0] !is Double || range[1] !is Double) throw ManifestException("manifest: vae_decoder_output_range must be [lo, hi]")
            val tok = root.obj("tokenizer", "manifest")
            val tokenizer = TokenizerSpec(
                tok.string("vocab", "tokenizer"), tok.string("merges", "tokenizer"),
                if (tok["max_length"] == null) 77 else tok.int("max_length", "tokenizer"),
                tok.int("bos_token_id", "tokenizer"), tok.int("eos_token_id", "tokenizer"), tok.int("pad_token_id", "tokenizer")
            )
            val components = LinkedHashMap<String, ComponentSpec>()
            for ((name, value) in root.obj("components", "manifest")) {
                @Suppress("UNCHECKED_CAST")
                val c = value as? Map<String, Any?> ?: throw ManifestException("component '$name' is not an object")
                components[name] = ComponentSpec(
                    name, c.string("file", name), c["precision"] as? String ?: "",
                    parseIo(c.list("inputs", name), "$name.inputs"), parseIo(c.list("outputs", name), "$name.outputs")
                )
            }
            for (name in REQUIRED_COMPONENTS) if (name !in components) throw ManifestException("manifest has no '$name' component")
            val files = LinkedHashMap<String, FileEntry>()
            for ((path, value) in root.obj("files", "manifest")) {
                @Suppress("UNCHECKED_CAST")
                val f = value as? Map<String, Any?> ?: throw ManifestException("files['$path'] is not an object")
                checkRelativePath(path)
                val size = f.double("size", "files['$path']")
                files[path] = FileEntry(asciiLower(f.string("sha256", "files['$path']")), size.toLong())
            }
            for (c in components.values) {
                if (files.keys.none { it == c.file || it.startsWith(c.file + "/") }) {
                    throw ManifestException("component '${c.name}' file '${c.file}' is not listed in the manifest's files (cannot be verified)")
                }
            }
            for (p in listOf(tokenizer.vocab, tokenizer.merges)) if (p !in files) throw ManifestException("tokenizer file '$p' is not listed in the manifest's files")
            val prediction = root["prediction_type"] as? String ?: "epsilon"
            @Suppress("UNCHECKED_CAST")
            val source = root["source"] as? Map<String, Any?> ?: emptyMap()
            @Suppress("UNCHECKED_CAST")
            val ge = root["guidance_embedding"] as? Map<String, Any?>
            val guidance = if (ge == null) null else parseGuidanceEmbedding(ge, components["unet"]!!)
            return Manifest(
                version, root.string("format", "manifest"), root["precision"] as? String ?: "",
                image.int("height", "image"), image.int("width", "image"),
                image.int("vae_scale_factor", "image"), image.int("latent_channels", "image"),
                root.double("latent_scaling_factor", "manifest"),
                root["vae_decoder_input_scaled"] == true,
                doubleArrayOf(range[0] as Double, range[1] as Double),
                prediction, root.obj("scheduler", "manifest"), guidance, tokenizer, components, files, source,
                parseVaeKind(root["vae"])
            )
        }

        /** What this engine ports of the embedding (the Python runtime's GUIDANCE_EMBEDDING_PORTED). */
        private val GUIDANCE_PORTED: Map<String, Any> = mapOf("w" to "guidance_scale - 1", "scale" to 1000.0, "max_period" to 10000.0)

        private fun parseGuidanceEmbedding(ge: Map<String, Any?>, unet: ComponentSpec): GuidanceEmbeddingSpec {
            val problems = GUIDANCE_PORTED.filter { (k, v) -> ge[k] != null && ge[k] != v }.map { (k, v) -> "$k=${ge[k]} (only $v is ported)" }
            if (problems.isNotEmpty()) throw ManifestException("guidance_embedding: unsupported " + problems.joinToString("; "))
            val spec = GuidanceEmbeddingSpec(ge.string("input", "guidance_embedding"), ge.int("dim", "guidance_embedding"))
            val io = unet.inputs.firstOrNull { it.name == spec.input }
                ?: throw ManifestException("guidance_embedding input '${spec.input}' is not an input of the unet (${unet.inputs.map { it.name }})")
            if (io.shape.size != 2 || (io.shape[1] != null && io.shape[1] != spec.dim)) {
                throw ManifestException("unet input '${spec.input}' has shape ${io.shape}, the guidance embedding needs [batch, ${spec.dim}]")
            }
            return spec
        }

        private fun parseIo(items: List<Any?>, where: String): List<IoSpec> {
            val result = ArrayList<IoSpec>()
            for ((k, item) in items.withIndex()) {
                @Suppress("UNCHECKED_CAST")
                val m = item as? Map<String, Any?> ?: throw ManifestException("$where[$k] is not an object")
                val name = m.string("name", "$where[$k]")
                val shape = m.list("shape", "$where[$k]").map { d ->
                    when (d) {
                        is Double -> d.toInt()
                        is String -> null
                        else -> throw ManifestException("$where[$k] '$name': bad dimension $d")
                    }
                }
                @Suppress("UNCHECKED_CAST")
                val q = m["quantization"] as? Map<String, Any?>
                val quant = if (q == null) null else Quantization(
                    q.double("scale", "$name.quantization"), q.int("zero_point", "$name.quantization"),
                    DType.parse(q.string("dtype", "$name.quantization"))
                )
                result.add(IoSpec(name, shape, DType.parse(m.string("dtype", "$where[$k]")), m["layout"] as? String, quant))
            }
            return result
        }

        private fun checkRelativePath(path: String) {
            if (path.startsWith("/") || path.split('/').any { it == ".." || it.isEmpty() }) {
                throw ManifestException("manifest file path '$path' escapes the bundle folder")
            }
        }
    }
}

/** An opened bundle folder. */
class Bundle private constructor(val dir: File, val manifest: Manifest) {
    fun file(relative: String): File = File(dir, relative)

    fun componentFile(name: String): File = file(manifest.component(name).file)

    fun loadTokenizer(): ClipTokenizer {
        val t = manifest.tokenizer
        return ClipTokenizer.fromFiles(file(t.vocab), file(t.merges), t.padTokenId, t.maxLength, t.bosTokenId, t.eosTokenId)
    }

    companion object {
        /**
         * Read `manifest.json` from [dir] and (unless [verify] is false) check every file's
         * size and sha256. [onFile] reports progress as (index, count, path).
         *
         * @throws ManifestException for a missing or invalid manifest
         * @throws BundleVerificationException listing every file that does not match
         */
        fun open(dir: File, verify: Boolean = true, onFile: ((Int, Int, String) -> Unit)? = null): Bundle {
            val manifestFile = File(dir, "manifest.json")
            if (!manifestFile.isFile) throw ManifestException("no manifest.json in ${dir.path}: not a bundle folder")
            val manifest = Manifest.parse(manifestFile.readText(Charsets.UTF_8))
            if (verify) verifyFiles(dir, manifest, onFile)
            return Bundle(dir, manifest)
        }

        fun verifyFiles(dir: File, manifest: Manifest, onFile: ((Int, Int, String) -> Unit)? = null) {
            val problems = ArrayList<BundleProblem>()
            var k = 0
            for ((path, entry) in manifest.files) {
                onFile?.invoke(k++, manifest.files.size, path)
                val f = File(dir, path)
                if (!f.isFile) {
                    problems.add(BundleProblem.Missing(path))
                    continue
                }
                if (f.length() != entry.size) {
                    problems.add(BundleProblem.SizeMismatch(path, entry.size, f.length()))
                    continue
                }
                val actual = sha256Hex(f)
                if (actual != entry.sha256) problems.add(BundleProblem.HashMismatch(path, entry.sha256, actual))
            }
            if (problems.isNotEmpty()) throw BundleVerificationException(problems)
        }

        fun sha256Hex(file: File): String {
            val digest = MessageDigest.getInstance("SHA-256")
            val buffer = ByteArray(1 shl 20)
            FileInputStream(file).use { input ->
                while (true) {
                    val n = input.read(buffer)
                    if (n < 0) break
                    digest.update(buffer, 0, n)
                }
            }
            val sb = StringBuilder()
            for (b in digest.digest()) sb.append(String.format("%02x", b.toInt() and 0xFF))
            return sb.toString()
        }
    }
}
