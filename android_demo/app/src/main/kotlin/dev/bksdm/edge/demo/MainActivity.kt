package dev.bksdm.edge.demo

import android.app.Activity
import android.content.Intent
import android.graphics.Bitmap
import android.graphics.Color
import android.os.Bundle
import android.os.Handler
import android.os.Looper
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.EditText
import android.widget.ImageView
import android.widget.ProgressBar
import android.widget.Spinner
import android.widget.TextView
import androidx.appcompat.app.AppCompatActivity
import dev.bksdm.edge.engine.BundleVerificationException
import dev.bksdm.edge.engine.DiffusionPipeline
import dev.bksdm.edge.engine.GenerationCancelledException
import dev.bksdm.edge.engine.GenerationRequest
import dev.bksdm.edge.engine.GenerationResult
import dev.bksdm.edge.engine.ManifestException
import dev.bksdm.edge.engine.ModelRunner
import dev.bksdm.edge.engine.Schedulers
import java.io.File
import java.util.concurrent.Executors
import java.util.concurrent.atomic.AtomicBoolean
import dev.bksdm.edge.engine.Bundle as EngineBundle

/**
 * A thin UI over the engine: pick a bundle, load its models once (verifying every
 * file's sha256 first), generate with per-step progress, show image, timings and
 * peak memory. Every failure is shown on screen.
 */
class MainActivity : AppCompatActivity() {
    /** Models stay loaded while the bundle and runtime stay the same. */
    private class Loaded(val dir: File, val accelerator: Accelerator, val bundle: EngineBundle, val runners: List<ModelRunner>, val pipeline: DiffusionPipeline, val loadMillis: Double) {
        fun close() = runners.forEach { it.close() }
    }

    private val worker = Executors.newSingleThreadExecutor()
    private val main = Handler(Looper.getMainLooper())
    private val cancel = AtomicBoolean(false)
    private var running = false
    private var loaded: Loaded? = null
    private var bundles: List<File> = emptyList()

    private lateinit var bundleSpinner: Spinner
    private lateinit var schedulerSpinner: Spinner
    private lateinit var acceleratorSpinner: Spinner
    private lateinit var prompt: EditText
    private lateinit var negative: EditText
    private lateinit var steps: EditText
    private lateinit var guidance: EditText
    private lateinit var seed: EditText
    private lateinit var generate: Button
    private lateinit var progress: ProgressBar
    private lateinit var status: TextView
    private lateinit var stats: TextView
    private lateinit var image: ImageView

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        bundleSpinner = findViewById(R.id.bundleSpinner)
        schedulerSpinner = findViewById(R.id.schedulerSpinner)
        acceleratorSpinner = findViewById(R.id.acceleratorSpinner)
        prompt = findViewById(R.id.promptInput)
        negative = findViewById(R.id.negativeInput)
        steps = findViewById(R.id.stepsInput)
        guidance = findViewById(R.id.guidanceInput)
        seed = findViewById(R.id.seedInput)
        generate = findViewById(R.id.generateButton)
        progress = findViewById(R.id.progressBar)
        status = findViewById(R.id.statusText)
        stats = findViewById(R.id.statsText)
        image = findViewById(R.id.imageView)

        schedulerSpinner.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, listOf("bundle default") + Schedulers.NAMES)
        acceleratorSpinner.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, Accelerator.values().map { it.label })
        findViewById<Button>(R.id.refreshButton).setOnClickListener { refreshBundles() }
        findViewById<Button>(R.id.importButton).setOnClickListener {
            startActivityForResult(Intent(Intent.ACTION_OPEN_DOCUMENT_TREE), REQUEST_IMPORT)
        }
        generate.setOnClickListener { if (running) cancel.set(true) else startGeneration() }
        refreshBundles()
    }

    override fun onDestroy() {
        cancel.set(true)
        worker.execute { loaded?.close() }
        worker.shutdown()
        super.onDestroy()
    }

    @Suppress("DEPRECATION")
    override fun onActivityResult(requestCode: Int, resultCode: Int, data: Intent?) {
        super.onActivityResult(requestCode, resultCode, data)
        val uri = data?.data
        if (requestCode != REQUEST_IMPORT || resultCode != Activity.RESULT_OK || uri == null) return
        setBusy(true)
        worker.execute {
            try {
                val dir = BundleImporter.import(this, uri) { name -> main.post { showStatus("Importing $name…") } }
                main.post {
                    refreshBundles()
                    bundleSpinner.setSelection(bundles.indexOf(dir).coerceAtLeast(0))
                    showStatus("Imported ${dir.name}")
                }
            } catch (e: Exception) {
                main.post { showError("Import failed: ${e.message}") }
            } finally {
                main.post { setBusy(false) }
            }
        }
    }

    private fun refreshBundles() {
        bundles = BundleImporter.listBundles(this)
        bundleSpinner.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, bundles.map { it.name })
        if (bundles.isEmpty()) showStatus(getString(R.string.no_bundles) + "\n(" + BundleImporter.bundlesDir(this).path + ")")
    }

    private fun startGeneration() {
        val dir = bundles.getOrNull(bundleSpinner.selectedItemPosition)
        if (dir == null) {
            showError(getString(R.string.no_bundles))
            return
        }
        val request = try {
            GenerationRequest(
                prompt = prompt.text.toString(),
                negativePrompt = negative.text.toString(),
                // Empty: the scheduler's default (25; LCM 4).
                steps = steps.text.toString().trim().let { if (it.isEmpty()) null else it.toInt().also { n -> require(n in 1..200) { "steps must be 1..200" } } },
                guidanceScale = guidance.text.toString().toFloat(),
                seed = seed.text.toString().toLong(),
                scheduler = if (schedulerSpinner.selectedItemPosition == 0) null else Schedulers.NAMES[schedulerSpinner.selectedItemPosition - 1]
            )
        } catch (e: Exception) {
            showError("Bad input: ${e.message}")
            return
        }
        val accelerator = Accelerator.values()[acceleratorSpinner.selectedItemPosition]
        cancel.set(false)
        setBusy(true)
        worker.execute {
            try {
                val model = ensureLoaded(dir, accelerator)
                post { showStatus("Generating (${request.steps ?: "default"} steps)…") }
                val result = model.pipeline.generate(request, { p ->
                    post {
                        progress.progress = 100 * p.step / p.totalSteps
                        showStatus(String.format("Step %d/%d  t=%.0f  %.0f ms", p.step, p.totalSteps, p.timestep, p.stepMillis))
                    }
                }, { cancel.get() })
                post { showResult(model, result) }
            } catch (e: GenerationCancelledException) {
                post { showStatus("Cancelled") }
            } catch (e: BundleVerificationException) {
                post { showError("Bundle files do not match the manifest:\n" + e.problems.joinToString("\n") { it.message }) }
            } catch (e: ManifestException) {
                post { showError("Bad bundle: ${e.message}") }
            } catch (e: OutOfMemoryError) {
                post { showError("Out of memory: try a smaller (int8 / Tiny) bundle. ${e.message ?: ""}") }
            } catch (e: Throwable) {
                post { showError("${e.javaClass.simpleName}: ${e.message}") }
            } finally {
                post { setBusy(false) }
            }
        }
    }

    /** On the worker thread: verify and load the bundle unless it is already loaded. */
    private fun ensureLoaded(dir: File, accelerator: Accelerator): Loaded {
        loaded?.let { if (it.dir == dir && it.accelerator == accelerator) return it }
        loaded?.close()
        loaded = null
        val t0 = System.nanoTime()
        val bundle = EngineBundle.open(dir, verify = true) { k, n, path -> post { showStatus("Verifying ${k + 1}/$n: $path") } }
        post { showStatus("Loading models (${accelerator.label})…") }
        val tokenizer = bundle.loadTokenizer()
        val runners = openRunners(bundle, accelerator)
        val pipeline = try {
            DiffusionPipeline(bundle.manifest, tokenizer, runners[0], runners[1], runners[2]) { Memory.rssBytes() }
        } catch (e: Throwable) {
            runners.forEach { it.close() }
            throw e
        }
        return Loaded(dir, accelerator, bundle, runners, pipeline, (System.nanoTime() - t0) / 1e6).also { loaded = it }
    }

    private fun showResult(model: Loaded, r: GenerationResult) {
        val bitmap = Bitmap.createBitmap(r.width, r.height, Bitmap.Config.ARGB_8888)
        bitmap.setPixels(r.argb, 0, r.width, 0, 0, r.width, r.height)
        image.setImageBitmap(bitmap)
        progress.progress = 100
        showStatus("Done")
        val m = model.bundle.manifest
        val perStep = if (r.stepMillis.isEmpty()) 0.0 else r.stepMillis.average()
        stats.text = String.format(
            "%s %s %s (%s)\nload+verify %.0f ms (first run only)\ntext encoder %.0f ms\nsteps %d x %.0f ms (min %.0f, max %.0f)\ndecoder %.0f ms\ntotal %.0f ms\npeak RSS during run %s, process peak (VmHWM) %s",
            m.format, m.precision, m.source["variant"] ?: "", model.accelerator.label, model.loadMillis,
            r.textEncoderMillis, r.stepMillis.size, perStep, r.stepMillis.minOrNull() ?: 0.0, r.stepMillis.maxOrNull() ?: 0.0,
            r.decoderMillis, r.totalMillis, Memory.mib(r.peakMemoryBytes), Memory.mib(Memory.peakRssBytes())
        )
    }

    private fun post(block: () -> Unit) {
        main.post(block)
    }

    private fun setBusy(busy: Boolean) {
        running = busy
        generate.text = getString(if (busy) R.string.cancel else R.string.generate)
    }

    private fun showStatus(text: String) {
        status.setTextColor(stats.currentTextColor)
        status.text = text
    }

    private fun showError(text: String) {
        status.setTextColor(Color.rgb(0xD3, 0x2F, 0x2F))
        status.text = text
    }

    companion object {
        private const val REQUEST_IMPORT = 1
    }
}
