package dev.bksdm.edge.demo

import java.io.File

/** Process memory from /proc/self/status: VmRSS (now) and VmHWM (peak resident set since start). */
object Memory {
    private fun readKb(key: String): Long {
        return try {
            File("/proc/self/status").useLines { lines ->
                val line = lines.firstOrNull { it.startsWith(key) } ?: return -1L
                line.substring(key.length).trim().split(Regex("\\s+"))[0].toLong() * 1024L
            }
        } catch (e: Exception) {
            -1L
        }
    }

    fun rssBytes(): Long = readKb("VmRSS:")

    fun peakRssBytes(): Long = readKb("VmHWM:")

    fun mib(bytes: Long): String = if (bytes < 0) "n/a" else String.format("%.0f MiB", bytes / 1048576.0)
}
