package dev.bksdm.edge.engine

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

class JsonTest {
    @Test
    fun parsesAllValueKinds() {
        val v = Json.parseObject("""{"a": [1, -2.5e3, 0.1, true, false, null], "s": "x\"\\\/\n\u00e9\ud83d\ude00", "o": {}}""")
        assertEquals(listOf(1.0, -2500.0, 0.1, true, false, null), v["a"])
        assertEquals("x\"\\/\n\u00e9\ud83d\ude00", v["s"])
        assertEquals(emptyMap<String, Any?>(), v["o"])
        assertEquals(listOf("a", "s", "o"), v.keys.toList()) // insertion order kept
    }

    @Test
    fun rejectsMalformedInputWithAnOffset() {
        for (bad in listOf("{", "[1,]", "{\"a\" 1}", "01", "1.", "\"abc", "tru", "{} x", "\"a\u0001\"", "-")) {
            try {
                Json.parse(bad)
                fail("accepted '$bad'")
            } catch (e: JsonException) {
                assertTrue(e.message!!, e.message!!.contains("offset"))
            }
        }
    }
}
