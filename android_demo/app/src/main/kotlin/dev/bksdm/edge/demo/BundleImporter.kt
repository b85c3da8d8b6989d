package dev.bksdm.edge.demo

import android.content.Context
import android.net.Uri
import androidx.documentfile.provider.DocumentFile
import java.io.File

/**
 * Copies a folder picked with the Storage Access Framework into the app's bundles
 * folder: the runtimes need real file paths, and a copy is verified against the
 * manifest like a pushed bundle.
 */
object BundleImporter {
    fun bundlesDir(context: Context): File {
        val dir = File(context.getExternalFilesDir(null) ?: context.filesDir, "bundles")
        dir.mkdirs()
        return dir
    }

    fun listBundles(context: Context): List<File> =
        bundlesDir(context).listFiles()?.filter { File(it, "manifest.json").isFile }?.sortedBy { it.name } ?: emptyList()

    /** Copy [tree] to bundles/NAME; returns the new folder. [onFile] reports each file copied. */
    fun import(context: Context, tree: Uri, onFile: (String) -> Unit): File {
        val root = DocumentFile.fromTreeUri(context, tree) ?: throw IllegalArgumentException("cannot open the picked folder")
        if (root.findFile("manifest.json") == null) throw IllegalArgumentException("the picked folder has no manifest.json: not a bundle")
        val name = root.name ?: "imported"
        val target = File(bundlesDir(context), name)
        val partial = File(bundlesDir(context), ".$name.partial")
        partial.deleteRecursively()
        copy(context, root, partial, "", onFile)
        target.deleteRecursively()
        if (!partial.renameTo(target)) throw IllegalStateException("could not move the imported bundle into place")
        return target
    }

    private fun copy(context: Context, dir: DocumentFile, into: File, prefix: String, onFile: (String) -> Unit) {
        into.mkdirs()
        for (child in dir.listFiles()) {
            val name = child.name ?: continue
            if (child.isDirectory) {
                copy(context, child, File(into, name), "$prefix$name/", onFile)
            } else {
                onFile(prefix + name)
                context.contentResolver.openInputStream(child.uri).use { input ->
                    requireNotNull(input) { "cannot read $prefix$name" }
                    File(into, name).outputStream().use { input.copyTo(it, 1 shl 20) }
                }
            }
        }
    }
}
