package dev.bksdm.edge.engine

import org.junit.Assert.assertEquals
import org.junit.Assert.fail

/** Golden vectors written by `python -m bksdm_edge.runtime.golden` (test resources). */
object Golden {
    fun text(name: String): String {
        val stream = Golden::class.java.getResourceAsStream("/golden/$name")
            ?: throw AssertionError("test resource /golden/$name not found: is src/test/resources on the classpath?")
        return stream.use { String(it.readBytes(), Charsets.UTF_8) }
    }

    fun load(name: String): Map<String, Any?> = Json.parseObject(text(name))

    @Suppress("UNCHECKED_CAST")
    fun cases(doc: Map<String, Any?>): List<Map<String, Any?>> = doc["cases"] as List<Map<String, Any?>>

    fun floats(v: Any?): FloatArray {
        val l = v as List<*>
        return FloatArray(l.size) { (l[it] as Double).toFloat() }
    }

    fun doubles(v: Any?): DoubleArray {
        val l = v as List<*>
        return DoubleArray(l.size) { l[it] as Double }
    }

    fun ints(v: Any?): IntArray {
        val l = v as List<*>
        return IntArray(l.size) { (l[it] as Double).toInt() }
    }

    /** |a - e| <= rtol * max(|e|, scale) element-wise, where scale is the largest |e| in the array. */
    fun assertClose(what: String, expected: DoubleArray, actual: DoubleArray, rtol: Double = 1e-4) {
        assertEquals("$what: length", expected.size.toLong(), actual.size.toLong())
        var scale = 0.0
        for (e in expected) scale = Math.max(scale, Math.abs(e))
        for (i in expected.indices) {
            val tol = rtol * Math.max(Math.abs(expected[i]), scale) + 1e-12
            if (!(Math.abs(actual[i] - expected[i]) <= tol)) {
                fail("$what[$i]: expected ${expected[i]}, got ${actual[i]} (tolerance $tol)")
            }
        }
    }

    fun assertClose(what: String, expected: FloatArray, actual: FloatArray, rtol: Double = 1e-4) =
        assertClose(what, DoubleArray(expected.size) { expected[it].toDouble() }, DoubleArray(actual.size) { actual[it].toDouble() }, rtol)
}
