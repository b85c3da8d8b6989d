package dev.bksdm.edge.engine

import java.io.File
import java.text.Normalizer

/**
 * CLIP's byte-level BPE tokenizer, id for id the same as `transformers.CLIPTokenizer`
 * (and the Python `bksdm_edge.runtime.tokenizer`, which the golden vectors come from):
 *
 * 1. special tokens (bos, eos, the pad token: `!` for SD-v2) are split off the raw text;
 * 2. the rest: Unicode NFC, white space runs to one space, per-character lower case;
 * 3. CLIP's word regex (contractions, letter runs, single digits, other-symbol runs);
 * 4. UTF-8 bytes mapped to GPT-2's printable characters, `</w>` on the last, BPE merges;
 * 5. bos + ids (truncated to maxLength - 2) + eos, padded with the pad id.
 */
class ClipTokenizer(
    private val vocab: Map<String, Int>,
    merges: List<Pair<String, String>>,
    val padTokenId: Int = 49407,
    val maxLength: Int = 77,
    bosTokenId: Int? = null,
    eosTokenId: Int? = null
) {
    val bosTokenId: Int = bosTokenId ?: vocab[BOS] ?: throw ManifestException("vocabulary has no $BOS")
    val eosTokenId: Int = eosTokenId ?: vocab[EOS] ?: throw ManifestException("vocabulary has no $EOS")
    private val mergeRanks = HashMap<String, Int>(merges.size * 2)
    private val specialTokens: Map<String, Int>
    private val specialSplit: Regex
    private val cache = HashMap<String, List<String>>()

    init {
        if (maxLength < 2) throw IllegalArgumentException("maxLength must be at least 2, got $maxLength")
        for ((rank, m) in merges.withIndex()) {
            val key = m.first + " " + m.second
            if (key !in mergeRanks) mergeRanks[key] = rank
        }
        val byId = HashMap<Int, String>(vocab.size * 2)
        for ((t, i) in vocab) byId[i] = t
        val specials = LinkedHashMap<String, Int>()
        for (id in listOf(this.bosTokenId, this.eosTokenId, padTokenId)) {
            val token = byId[id] ?: throw ManifestException("token id $id (bos/eos/pad) is not in the vocabulary")
            specials[token] = id
        }
        specialTokens = specials
        // Longest first, so a special token containing another one wins.
        specialSplit = Regex(specials.keys.sortedByDescending { it.length }.joinToString("|") { Regex.escape(it) })
    }

    /** NFC, white space runs to a single space, lower case per character (Σ is always σ). */
    fun normalize(text: String): String {
        val nfc = Normalizer.normalize(text, Normalizer.Form.NFC)
        val spaced = WHITESPACE_RUN.replace(nfc, " ")
        val sb = StringBuilder(spaced.length)
        var i = 0
        while (i < spaced.length) {
            val cp = spaced.codePointAt(i)
            if (cp == 0x130) {
                sb.append("i\u0307") // İ's full lower-case mapping; the only unconditional multi-char one
            } else {
                sb.appendCodePoint(Character.toLowerCase(cp))
            }
            i += Character.charCount(cp)
        }
        return sb.toString()
    }

    /** Text -> BPE tokens, without bos/eos, truncation or padding. */
    fun tokenize(text: String): List<String> {
        val tokens = ArrayList<String>()
        var last = 0
        for (m in specialSplit.findAll(text)) {
            tokenizePlain(text.substring(last, m.range.first), tokens)
            tokens.add(m.value)
            last = m.range.last + 1
        }
        tokenizePlain(text.substring(last), tokens)
        return tokens
    }

    private fun tokenizePlain(piece: String, out: MutableList<String>) {
        if (piece.isEmpty()) return
        for (m in WORDS.findAll(normalize(piece))) {
            val bytes = m.value.toByteArray(Charsets.UTF_8)
            val sb = StringBuilder(bytes.size)
            for (b in bytes) sb.append(BYTE_TO_CHAR[b.toInt() and 0xFF])
            out.addAll(bpe(sb.toString()))
        }
    }

    /** Byte-pair-merge one byte-mapped word: repeatedly merge the adjacent pair of lowest rank. */
    fun bpe(word: String): List<String> {
        val cached = cache[word]
        if (cached != null) return cached
        var symbols = ArrayList<String>(word.length)
        for (i in 0 until word.length - 1) symbols.add(word.substring(i, i + 1))
        symbols.add(word.substring(word.length - 1) + END_OF_WORD)
        while (symbols.size > 1) {
            var bestRank = Int.MAX_VALUE
            var bestLeft: String? = null
            var bestRight: String? = null
            for (i in 0 until symbols.size - 1) {
                val rank = mergeRanks[symbols[i] + " " + symbols[i + 1]] ?: continue
                if (rank < bestRank) {
                    bestRank = rank
                    bestLeft = symbols[i]
                    bestRight = symbols[i + 1]
                }
            }
            if (bestLeft == null) break
            val merged = ArrayList<String>(symbols.size)
            var i = 0
            while (i < symbols.size) {
                if (i + 1 < symbols.size && symbols[i] == bestLeft && symbols[i + 1] == bestRight) {
                    merged.add(bestLeft + bestRight)
                    i += 2
                } else {
                    merged.add(symbols[i])
                    i += 1
                }
            }
            symbols = merged
        }
        cache[word] = symbols
        return symbols
    }

    /** Text -> exactly [maxLength] ids: bos, tokens (truncated), eos, padding. */
    fun encode(text: String): IntArray {
        val ids = IntArray(maxLength)
        java.util.Arrays.fill(ids, padTokenId)
        ids[0] = bosTokenId
        var n = 1
        for (t in tokenize(text)) {
            if (n == maxLength - 1) break
            ids[n++] = vocab[t] ?: throw IllegalStateException("BPE produced '$t', which is not in the vocabulary")
        }
        ids[n] = eosTokenId
        return ids
    }

    companion object {
        const val BOS = "<|startoftext|>"
        const val EOS = "<|endoftext|>"
        const val END_OF_WORD = "</w>"

        /** Unicode White_Space, spelled out: Java's `\s` is ASCII-only by default, ICU's (Android) is not. */
        private const val WS = "\\t\\n\\x0B\\f\\r \\x85\\xA0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000"
        private val WHITESPACE_RUN = Regex("[$WS]+")
        private val WORDS = Regex("'s|'t|'re|'ve|'m|'ll|'d|\\p{L}+|\\p{N}|[^$WS\\p{L}\\p{N}]+")

        /** GPT-2 / CLIP's reversible byte -> printable character map. */
        private val BYTE_TO_CHAR: CharArray = run {
            val table = CharArray(256)
            val printable = BooleanArray(256)
            for (b in 0x21..0x7E) printable[b] = true
            for (b in 0xA1..0xAC) printable[b] = true
            for (b in 0xAE..0xFF) printable[b] = true
            var extra = 0
            for (b in 0 until 256) {
                table[b] = if (printable[b]) b.toChar() else (256 + extra++).toChar()
            }
            table
        }

        /** Read `vocab.json` and `merges.txt` (an optional `#version` first line is skipped). */
        fun fromFiles(
            vocabFile: File,
            mergesFile: File,
            padTokenId: Int = 49407,
            maxLength: Int = 77,
            bosTokenId: Int? = null,
            eosTokenId: Int? = null
        ): ClipTokenizer =
            fromText(vocabFile.readText(Charsets.UTF_8), mergesFile.readText(Charsets.UTF_8), padTokenId, maxLength, bosTokenId, eosTokenId)

        fun fromText(
            vocabJson: String,
            mergesText: String,
            padTokenId: Int = 49407,
            maxLength: Int = 77,
            bosTokenId: Int? = null,
            eosTokenId: Int? = null
        ): ClipTokenizer {
            val vocab = HashMap<String, Int>()
            for ((token, id) in Json.parseObject(vocabJson)) {
                vocab[token] = (id as? Double)?.toInt() ?: throw ManifestException("vocab.json: id of '$token' is not a number")
            }
            val merges = ArrayList<Pair<String, String>>()
            for ((n, line) in mergesText.split('\n').withIndex()) {
                if (line.isEmpty() || (n == 0 && line.startsWith("#version"))) continue
                val parts = line.split(' ')
                if (parts.size != 2) throw ManifestException("merges.txt line ${n + 1} is not a merge pair: '$line'")
                merges.add(Pair(parts[0], parts[1]))
            }
            return ClipTokenizer(vocab, merges, padTokenId, maxLength, bosTokenId, eosTokenId)
        }
    }
}
