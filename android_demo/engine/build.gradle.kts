// Plain Kotlin/JVM: no Android dependency, so `./gradlew :engine:test` runs on any JVM.
// (CI compiles the same sources with kotlinc 1.3 via test.sh; keep the code 1.3-compatible.)
plugins {
    alias(libs.plugins.kotlin.jvm)
}

java {
    sourceCompatibility = JavaVersion.VERSION_1_8
    targetCompatibility = JavaVersion.VERSION_1_8
}

kotlin {
    compilerOptions {
        jvmTarget.set(org.jetbrains.kotlin.gradle.dsl.JvmTarget.JVM_1_8)
    }
}

dependencies {
    testImplementation(libs.junit)
}
