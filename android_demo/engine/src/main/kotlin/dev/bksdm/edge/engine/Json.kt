package dev.bksdm.edge.engine

/** Raised for malformed JSON; [offset] is the character position of the problem. */
class JsonException(message: String, val offset: Int) : Exception("$message at offset $offset")

/**
 * A small strict JSON parser (RFC 8259), so the engine needs no JSON library on the
 * plain JVM. Objects become [Map] (insertion ordered), arrays [List], numbers [Double],
 * plus [String], [Boolean] and null.
 */
object Json {
    fun parse(text: String): Any? {
        val p = Parser(text)
        p.skipWhitespace()
        val value = p.readValue()
        p.skipWhitespace()
        if (p.pos != text.length) throw JsonException("trailing characters", p.pos)
        return value
    }

    /** Parse a document whose top level must be an object. */
    @Suppress("UNCHECKED_CAST")
    fun parseObject(text: String): Map<String, Any?> {
        val value = parse(text)
        if (value !is Map<*, *>) throw JsonException("top level is not an object", 0)
        return value as Map<String, Any?>
    }

    private class Parser(val s: String) {
        var pos = 0

        fun skipWhitespace() {
            while (pos < s.length) {
                val c = s[pos]
                if (c == ' ' || c == '\n' || c == '\r' || c == '\t') pos++ else return
            }
        }

        fun readValue(): Any? {
            if (pos >= s.length) throw JsonException("unexpected end of input", pos)
            return when (s[pos]) {
                '{' -> readObject()
                '[' -> readArray()
                '"' -> readString()
                't' -> readLiteral("true", true)
                'f' -> readLiteral("false", false)
                'n' -> readLiteral("null", null)
                else -> readNumber()
            }
        }

        private fun readLiteral(word: String, value: Any?): Any? {
            if (!s.startsWith(word, pos)) throw JsonException("unexpected character '${s[pos]}'", pos)
            pos += word.length
            return value
        }

        private fun expect(c: Char) {
            if (pos >= s.length || s[pos] != c) throw JsonException("expected '$c'", pos)
            pos++
        }

        private fun readObject(): Map<String, Any?> {
            val result = LinkedHashMap<String, Any?>()
            expect('{')
            skipWhitespace()
            if (pos < s.length && s[pos] == '}') {
                pos++
                return result
            }
            while (true) {
                skipWhitespace()
                if (pos >= s.length || s[pos] != '"') throw JsonException("expected a string key", pos)
                val key = readString()
                skipWhitespace()
                expect(':')
                skipWhitespace()
                result[key] = readValue()
                skipWhitespace()
                if (pos < s.length && s[pos] == ',') {
                    pos++
                    continue
                }
                expect('}')
                return result
            }
        }

        private fun readArray(): List<Any?> {
            val result = ArrayList<Any?>()
            expect('[')
            skipWhitespace()
            if (pos < s.length && s[pos] == ']') {
                pos++
                return result
            }
            while (true) {
                skipWhitespace()
                result.add(readValue())
                skipWhitespace()
                if (pos < s.length && s[pos] == ',') {
                    pos++
                    continue
                }
                expect(']')
                return result
            }
        }

        private fun readString(): String {
            expect('"')
            val sb = StringBuilder()
            while (true) {
                if (pos >= s.length) throw JsonException("unterminated string", pos)
                val c = s[pos++]
                when {
                    c == '"' -> return sb.toString()
                    c == '\\' -> {
                        if (pos >= s.length) throw JsonException("unterminated escape", pos)
                        val e = s[pos++]
                        when (e) {
                            '"' -> sb.append('"')
                            '\\' -> sb.append('\\')
                            '/' -> sb.append('/')
                            'b' -> sb.append('\b')
                            'f' -> sb.append('\u000C')
                            'n' -> sb.append('\n')
                            'r' -> sb.append('\r')
                            't' -> sb.append('\t')
                            'u' -> {
                                if (pos + 4 > s.length) throw JsonException("short \\u escape", pos)
                                val hex = s.substring(pos, pos + 4)
                                val code = try {
                                    Integer.parseInt(hex, 16)
                                } catch (ex: NumberFormatException) {
                                    throw JsonException("bad \\u escape '$hex'", pos)
                                }
                                sb.append(code.toChar()) // surrogate pairs arrive as two escapes
                                pos += 4
                            }
                            else -> throw JsonException("bad escape '\\$e'", pos - 1)
                        }
                    }
                    c < ' ' -> throw JsonException("control character in string", pos - 1)
                    else -> sb.append(c)
                }
            }
        }

        private fun readNumber(): Double {
            val start = pos
            if (pos < s.length && s[pos] == '-') pos++
            val intStart = pos
            while (pos < s.length && s[pos] in '0'..'9') pos++
            if (pos == intStart) throw JsonException("unexpected character '${s[start]}'", start)
            if (s[intStart] == '0' && pos - intStart > 1) throw JsonException("leading zero", intStart)
            if (pos < s.length && s[pos] == '.') {
                pos++
                val fracStart = pos
                while (pos < s.length && s[pos] in '0'..'9') pos++
                if (pos == fracStart) throw JsonException("digits expected after '.'", pos)
            }
            if (pos < s.length && (s[pos] == 'e' || s[pos] == 'E')) {
                pos++
                if (pos < s.length && (s[pos] == '+' || s[pos] == '-')) pos++
                val expStart = pos
                while (pos < s.length && s[pos] in '0'..'9') pos++
                if (pos == expStart) throw JsonException("digits expected in exponent", pos)
            }
            return s.substring(start, pos).toDouble()
        }
    }
}

/** Typed accessors over parsed JSON objects; each failure names the key. */
internal fun Map<String, Any?>.optional(key: String): Any? = this[key]

internal fun Map<String, Any?>.required(key: String, where: String): Any =
    this[key] ?: throw ManifestException("$where: missing '$key'")

@Suppress("UNCHECKED_CAST")
internal fun Map<String, Any?>.obj(key: String, where: String): Map<String, Any?> {
    val v = required(key, where)
    return v as? Map<String, Any?> ?: throw ManifestException("$where: '$key' is not an object")
}

internal fun Map<String, Any?>.list(key: String, where: String): List<Any?> {
    val v = required(key, where)
    return v as? List<Any?> ?: throw ManifestException("$where: '$key' is not an array")
}

internal fun Map<String, Any?>.string(key: String, where: String): String {
    val v = required(key, where)
    return v as? String ?: throw ManifestException("$where: '$key' is not a string")
}

internal fun Map<String, Any?>.double(key: String, where: String): Double {
    val v = required(key, where)
    return v as? Double ?: throw ManifestException("$where: '$key' is not a number")
}

internal fun Map<String, Any?>.int(key: String, where: String): Int {
    val d = double(key, where)
    if (d != Math.floor(d) || Math.abs(d) > Int.MAX_VALUE) throw ManifestException("$where: '$key' is not an integer")
    return d.toInt()
}

internal fun Map<String, Any?>.bool(key: String, where: String): Boolean {
    val v = required(key, where)
    return v as? Boolean ?: throw ManifestException("$where: '$key' is not a boolean")
}

/** ASCII-only lower case (hex digests, names): locale-free and the same on every Kotlin version. */
internal fun asciiLower(s: String): String {
    val sb = StringBuilder(s.length)
    for (c in s) sb.append(if (c in 'A'..'Z') c + ('a' - 'A') else c)
    return sb.toString()
}
