package dev.bksdm.edge.demo

import ai.onnxruntime.OnnxJavaType
import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import android.util.Half
import dev.bksdm.edge.engine.ComponentSpec
import dev.bksdm.edge.engine.DType
import dev.bksdm.edge.engine.FloatTensor
import dev.bksdm.edge.engine.IntTensor
import dev.bksdm.edge.engine.IoSpec
import dev.bksdm.edge.engine.LongTensor
import dev.bksdm.edge.engine.ModelInterfaceException
import dev.bksdm.edge.engine.ModelRunner
import dev.bksdm.edge.engine.Tensor
import org.tensorflow.lite.DataType
import org.tensorflow.lite.Interpreter
import org.tensorflow.lite.gpu.GpuDelegate
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

/** Execution back-ends the user can pick; which ones apply depends on the bundle format. */
enum class Accelerator(val label: String, val format: String) {
    ORT_CPU("ONNX Runtime CPU", "onnx"),
    ORT_XNNPACK("ONNX Runtime XNNPACK", "onnx"),
    ORT_NNAPI("ONNX Runtime NNAPI", "onnx"),
    LITERT_CPU("LiteRT CPU (XNNPACK)", "tflite"),
    LITERT_GPU("LiteRT GPU delegate", "tflite");

    companion object {
        fun forFormat(format: String): List<Accelerator> = values().filter { it.format == format }
    }
}

private val THREADS = Runtime.getRuntime().availableProcessors().coerceIn(1, 4)

/**
 * ONNX Runtime runner. The session is created once; input tensors wrap direct buffers
 * allocated once (ORT reads them without copying) and outputs are copied into arrays
 * that are reused on every call.
 */
class OrtRunner(private val env: OrtEnvironment, model: File, private val spec: ComponentSpec, accelerator: Accelerator) : ModelRunner {
    private val session: OrtSession
    private val inputBuffers = HashMap<String, ByteBuffer>()
    private val outputArrays = HashMap<String, FloatArray>()

    init {
        val options = OrtSession.SessionOptions()
        options.setOptimizationLevel(OrtSession.SessionOptions.OptLevel.ALL_OPT)
        options.setIntraOpNumThreads(if (accelerator == Accelerator.ORT_XNNPACK) 1 else THREADS)
        when (accelerator) {
            Accelerator.ORT_NNAPI -> options.addNnapi()
            Accelerator.ORT_XNNPACK -> options.addXnnpack(mapOf("intra_op_num_threads" to THREADS.toString()))
            else -> Unit
        }
        session = env.createSession(model.path, options)
    }

    override fun run(inputs: Map<String, Tensor>): Map<String, Tensor> {
        val ortInputs = LinkedHashMap<String, OnnxTensor>()
        try {
            for (io in spec.inputs) {
                val t = inputs[io.name] ?: throw ModelInterfaceException("${spec.name}: input '${io.name}' not given")
                ortInputs[io.name] = toOrt(io, t)
            }
            session.run(ortInputs).use { result ->
                val out = LinkedHashMap<String, Tensor>()
                for (io in spec.outputs) {
                    val value = result.get(io.name).orElseThrow { ModelInterfaceException("${spec.name}: no output '${io.name}'") }
                    val tensor = value as OnnxTensor
                    val shape = tensor.info.shape.map { it.toInt() }.toIntArray()
                    val fb = tensor.floatBuffer // ORT up-casts float16 outputs
                    val arr = outputArrays[io.name]?.takeIf { it.size == fb.remaining() } ?: FloatArray(fb.remaining()).also { outputArrays[io.name] = it }
                    fb.get(arr)
                    out[io.name] = FloatTensor(shape, arr)
                }
                return out
            }
        } finally {
            for (t in ortInputs.values) t.close()
        }
    }

    private fun buffer(name: String, bytes: Int): ByteBuffer {
        val b = inputBuffers[name]?.takeIf { it.capacity() == bytes }
            ?: ByteBuffer.allocateDirect(bytes).order(ByteOrder.nativeOrder()).also { inputBuffers[name] = it }
        b.clear()
        return b
    }

    private fun toOrt(io: IoSpec, t: Tensor): OnnxTensor {
        val shape = LongArray(t.shape.size) { t.shape[it].toLong() }
        return when (io.dtype) {
            DType.FLOAT32 -> {
                val b = buffer(io.name, 4 * t.size)
                b.asFloatBuffer().put((t as FloatTensor).data)
                OnnxTensor.createTensor(env, b.asFloatBuffer(), shape)
            }
            DType.FLOAT16 -> {
                val b = buffer(io.name, 2 * t.size)
                val sb = b.asShortBuffer()
                when (t) {
                    is FloatTensor -> for (v in t.data) sb.put(Half.toHalf(v))
                    is LongTensor -> for (v in t.data) sb.put(Half.toHalf(v.toFloat()))
                    is IntTensor -> for (v in t.data) sb.put(Half.toHalf(v.toFloat()))
                }
                OnnxTensor.createTensor(env, b, shape, OnnxJavaType.FLOAT16)
            }
            DType.INT64 -> {
                val b = buffer(io.name, 8 * t.size)
                val lb = b.asLongBuffer()
                when (t) {
                    is LongTensor -> lb.put(t.data)
                    is IntTensor -> for (v in t.data) lb.put(v.toLong())
                    is FloatTensor -> for (v in t.data) lb.put(v.toLong())
                }
                OnnxTensor.createTensor(env, b.asLongBuffer(), shape)
            }
            DType.INT32 -> {
                val b = buffer(io.name, 4 * t.size)
                val ib = b.asIntBuffer()
                when (t) {
                    is IntTensor -> ib.put(t.data)
                    is LongTensor -> for (v in t.data) ib.put(v.toInt())
                    is FloatTensor -> for (v in t.data) ib.put(v.toInt())
                }
                OnnxTensor.createTensor(env, b.asIntBuffer(), shape)
            }
            else -> throw ModelInterfaceException("${spec.name}: ONNX input dtype ${io.dtype} is not supported by this app")
        }
    }

    override fun close() = session.close()
}

/**
 * LiteRT (TFLite) runner: one Interpreter per model, CPU (XNNPACK) or the GPU delegate.
 * Quantized int8/uint8 inputs and outputs are (de)quantized with the scale and zero
 * point from the manifest. Input/output buffers are allocated once.
 */
class LiteRtRunner(model: File, private val spec: ComponentSpec, accelerator: Accelerator) : ModelRunner {
    private val gpu: GpuDelegate? = if (accelerator == Accelerator.LITERT_GPU) GpuDelegate() else null
    private val interpreter: Interpreter
    private val inputIndex: IntArray
    private val outputIndex: IntArray
    private val inputBuffers: Array<ByteBuffer>
    private val outputBuffers: Array<ByteBuffer>
    private val outputArrays: Array<FloatArray>
    private val scratch = HashMap<String, ByteArray>()

    init {
        val options = Interpreter.Options().setNumThreads(THREADS).setUseXNNPACK(gpu == null)
        if (gpu != null) options.addDelegate(gpu)
        interpreter = Interpreter(model, options)
        inputIndex = IntArray(spec.inputs.size) { indexOf(spec.inputs[it].name, it, true) }
        outputIndex = IntArray(spec.outputs.size) { indexOf(spec.outputs[it].name, it, false) }
        inputBuffers = Array(inputIndex.size) { allocate(interpreter.getInputTensor(inputIndex[it]).numBytes()) }
        outputBuffers = Array(outputIndex.size) { allocate(interpreter.getOutputTensor(outputIndex[it]).numBytes()) }
        outputArrays = Array(outputIndex.size) { FloatArray(interpreter.getOutputTensor(outputIndex[it]).numElements()) }
    }

    private fun allocate(bytes: Int) = ByteBuffer.allocateDirect(bytes).order(ByteOrder.nativeOrder())

    /** Tensor names first (the manifest's names), then the manifest's position. */
    private fun indexOf(name: String, position: Int, input: Boolean): Int = try {
        if (input) interpreter.getInputIndex(name) else interpreter.getOutputIndex(name)
    } catch (e: IllegalArgumentException) {
        position
    }

    override fun run(inputs: Map<String, Tensor>): Map<String, Tensor> {
        for ((k, io) in spec.inputs.withIndex()) {
            val t = inputs[io.name] ?: throw ModelInterfaceException("${spec.name}: input '${io.name}' not given")
            fill(io, t, inputBuffers[k], interpreter.getInputTensor(inputIndex[k]).dataType())
        }
        val outputs = HashMap<Int, Any>()
        for ((k, b) in outputBuffers.withIndex()) {
            b.clear()
            outputs[outputIndex[k]] = b
        }
        interpreter.runForMultipleInputsOutputs(inputBuffers.map { it as Any }.toTypedArray(), outputs)
        val result = LinkedHashMap<String, Tensor>()
        for ((k, io) in spec.outputs.withIndex()) {
            val tensor = interpreter.getOutputTensor(outputIndex[k])
            val b = outputBuffers[k]
            b.rewind()
            val arr = outputArrays[k]
            when (tensor.dataType()) {
                DataType.FLOAT32 -> b.asFloatBuffer().get(arr)
                DataType.INT8, DataType.UINT8 -> {
                    val q = io.quantization ?: throw ModelInterfaceException("${spec.name}: output '${io.name}' is quantized but the manifest has no scale/zero point")
                    val bytes = scratch.getOrPut(io.name) { ByteArray(arr.size) }
                    b.get(bytes)
                    q.dequantize(bytes, arr)
                }
                else -> throw ModelInterfaceException("${spec.name}: output dtype ${tensor.dataType()} is not supported")
            }
            result[io.name] = FloatTensor(tensor.shape(), arr)
        }
        return result
    }

    private fun fill(io: IoSpec, t: Tensor, b: ByteBuffer, type: DataType) {
        b.clear()
        when (type) {
            DataType.FLOAT32 -> {
                val fb = b.asFloatBuffer()
                when (t) {
                    is FloatTensor -> fb.put(t.data)
                    is IntTensor -> for (v in t.data) fb.put(v.toFloat())
                    is LongTensor -> for (v in t.data) fb.put(v.toFloat())
                }
            }
            DataType.INT32 -> {
                val ib = b.asIntBuffer()
                when (t) {
                    is IntTensor -> ib.put(t.data)
                    is LongTensor -> for (v in t.data) ib.put(v.toInt())
                    is FloatTensor -> for (v in t.data) ib.put(v.toInt())
                }
            }
            DataType.INT64 -> {
                val lb = b.asLongBuffer()
                when (t) {
                    is LongTensor -> lb.put(t.data)
                    is IntTensor -> for (v in t.data) lb.put(v.toLong())
                    is FloatTensor -> for (v in t.data) lb.put(v.toLong())
                }
            }
            DataType.INT8, DataType.UINT8 -> {
                val q = io.quantization ?: throw ModelInterfaceException("${spec.name}: input '${io.name}' is quantized but the manifest has no scale/zero point")
                val bytes = scratch.getOrPut(io.name) { ByteArray(t.size) }
                q.quantize((t as FloatTensor).data, bytes)
                b.put(bytes)
            }
            else -> throw ModelInterfaceException("${spec.name}: input dtype $type is not supported")
        }
        b.rewind()
    }

    override fun close() {
        interpreter.close()
        gpu?.close()
    }
}

/** Open the three runners of a bundle with [accelerator]; models are loaded here, once. */
fun openRunners(bundle: dev.bksdm.edge.engine.Bundle, accelerator: Accelerator): List<ModelRunner> {
    val m = bundle.manifest
    if (accelerator.format != m.format) {
        throw ModelInterfaceException("${accelerator.label} cannot run a '${m.format}' bundle")
    }
    val names = listOf("text_encoder", "unet", "vae_decoder")
    val opened = ArrayList<ModelRunner>()
    try {
        for (name in names) {
            val spec = m.component(name)
            val file = bundle.componentFile(name)
            opened.add(
                if (m.format == "onnx") OrtRunner(OrtEnvironment.getEnvironment(), file, spec, accelerator)
                else LiteRtRunner(file, spec, accelerator)
            )
        }
    } catch (e: Throwable) {
        for (r in opened) r.close()
        throw e
    }
    return opened
}
