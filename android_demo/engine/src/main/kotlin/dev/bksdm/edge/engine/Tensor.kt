package dev.bksdm.edge.engine

import java.io.Closeable

/** Element types of model inputs and outputs, named as in the manifest. */
enum class DType(val manifestName: String) {
    FLOAT32("float32"), FLOAT16("float16"), INT64("int64"), INT32("int32"), INT8("int8"), UINT8("uint8");

    companion object {
        fun parse(name: String): DType {
            for (d in values()) if (d.manifestName == name) return d
            throw ManifestException("unknown dtype '$name'")
        }
    }
}

/**
 * A dense row-major tensor. The engine exchanges float32, int32 and int64 tensors with
 * [ModelRunner]s; a runner converts to the model's own storage (float16, quantized int8)
 * using the [IoSpec] it was built with.
 */
sealed class Tensor(val shape: IntArray) {
    val size: Int get() = shapeSize(shape)
}

class FloatTensor(shape: IntArray, val data: FloatArray) : Tensor(shape) {
    init {
        require(data.size == shapeSize(shape)) { "data size ${data.size} != shape ${shape.contentToString()}" }
    }
}

class IntTensor(shape: IntArray, val data: IntArray) : Tensor(shape) {
    init {
        require(data.size == shapeSize(shape)) { "data size ${data.size} != shape ${shape.contentToString()}" }
    }
}

class LongTensor(shape: IntArray, val data: LongArray) : Tensor(shape) {
    init {
        require(data.size == shapeSize(shape)) { "data size ${data.size} != shape ${shape.contentToString()}" }
    }
}

fun shapeSize(shape: IntArray): Int {
    var n = 1
    for (d in shape) n *= d
    return n
}

/**
 * One model (text encoder, U-Net or VAE decoder) loaded in some runtime. Implementations
 * load the model once and may return the same output tensors (reused buffers) on every
 * call: the engine copies what it keeps before the next call.
 */
interface ModelRunner : Closeable {
    fun run(inputs: Map<String, Tensor>): Map<String, Tensor>
}

/** Affine quantization of an integer tensor: real = scale * (q - zeroPoint). */
class Quantization(val scale: Double, val zeroPoint: Int, val dtype: DType) {
    private val lo = if (dtype == DType.UINT8) 0 else -128
    private val hi = if (dtype == DType.UINT8) 255 else 127

    init {
        if (dtype != DType.INT8 && dtype != DType.UINT8) throw ManifestException("quantized dtype must be int8 or uint8, got $dtype")
        if (!(scale > 0.0)) throw ManifestException("quantization scale must be > 0, got $scale")
    }

    /** Quantize [src] into [dst] (round half to even, saturate), as TFLite converters do. */
    fun quantize(src: FloatArray, dst: ByteArray) {
        require(src.size == dst.size) { "size mismatch ${src.size} != ${dst.size}" }
        for (i in src.indices) {
            var q = Math.rint(src[i] / scale).toInt() + zeroPoint
            if (q < lo) q = lo
            if (q > hi) q = hi
            dst[i] = q.toByte()
        }
    }

    /** Dequantize [src] into [dst]. */
    fun dequantize(src: ByteArray, dst: FloatArray) {
        require(src.size == dst.size) { "size mismatch ${src.size} != ${dst.size}" }
        for (i in src.indices) {
            val q = if (dtype == DType.UINT8) src[i].toInt() and 0xFF else src[i].toInt()
            dst[i] = (scale * (q - zeroPoint)).toFloat()
        }
    }
}

/** Layout conversion between the engine's NCHW and a model's NHWC (batch 1 or more). */
object Layout {
    fun nchwToNhwc(src: FloatArray, n: Int, c: Int, h: Int, w: Int, dst: FloatArray) {
        for (b in 0 until n) for (ch in 0 until c) for (y in 0 until h) for (x in 0 until w) {
            dst[((b * h + y) * w + x) * c + ch] = src[((b * c + ch) * h + y) * w + x]
        }
    }

    fun nhwcToNchw(src: FloatArray, n: Int, c: Int, h: Int, w: Int, dst: FloatArray) {
        for (b in 0 until n) for (ch in 0 until c) for (y in 0 until h) for (x in 0 until w) {
            dst[((b * c + ch) * h + y) * w + x] = src[((b * h + y) * w + x) * c + ch]
        }
    }
}
