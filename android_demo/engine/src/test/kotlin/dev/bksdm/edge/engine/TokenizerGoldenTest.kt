package dev.bksdm.edge.engine

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test

class TokenizerGoldenTest {
    private val doc = Golden.load("tokenizer.json")
    private val vocab = Golden.text(doc["vocab"] as String)
    private val merges = Golden.text(doc["merges"] as String)

    private fun tokenizer(padId: Int) = ClipTokenizer.fromText(vocab, merges, padId, (doc["max_length"] as Double).toInt())

    @Test
    fun idsMatchPythonForEveryGoldenPrompt() {
        val cases = Golden.cases(doc)
        assertTrue("golden prompts present", cases.size >= 20)
        val byPad = HashMap<Int, ClipTokenizer>()
        for (case in cases) {
            val pad = (case["pad_token_id"] as Double).toInt()
            val tok = byPad.getOrPut(pad) { tokenizer(pad) }
            val prompt = case["prompt"] as String
            assertArrayEquals("prompt '$prompt' (pad $pad)", Golden.ints(case["ids"]), tok.encode(prompt))
        }
    }

    @Test
    fun specialIdsComeFromTheVocabulary() {
        val tok = tokenizer(49407)
        assertEquals((doc["bos_token_id"] as Double).toInt(), tok.bosTokenId)
        assertEquals((doc["eos_token_id"] as Double).toInt(), tok.eosTokenId)
        val empty = tok.encode("")
        assertEquals(77, empty.size)
        assertEquals(tok.bosTokenId, empty[0])
        for (i in 1 until 77) assertEquals(49407, empty[i])
    }

    @Test
    fun normalizationFollowsTokenizersNotLocaleRules() {
        val tok = tokenizer(49407)
        assertEquals("οδοσ", tok.normalize("ΟΔΟΣ")) // no final-sigma rule
        assertEquals("i\u0307stanbul", tok.normalize("İstanbul"))
        assertEquals("a b c", tok.normalize("a\u3000\u00a0b\t\nc"))
        assertEquals("\u00e9", tok.normalize("e\u0301"))
    }
}
