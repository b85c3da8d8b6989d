#!/usr/bin/env bash
# Compile the engine and its JUnit4 tests with kotlinc and run them on the JVM.
# Prerequisite (Debian/Ubuntu): apt-get install -y kotlin junit4
# Compiled classes are cached under build/test-sh/ keyed by the sources' hash, so a
# rerun without changes only runs the tests. Exit status: JUnit's (non-zero on failure).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"

die() { echo "test.sh: $*" >&2; exit 2; }

command -v kotlinc >/dev/null 2>&1 || die "kotlinc not found; install it with: apt-get install -y kotlin junit4"
command -v java >/dev/null 2>&1 || die "java not found; install a JDK (apt-get install -y default-jdk-headless)"

find_jar() { # first existing file among the arguments
    for f in "$@"; do [ -f "$f" ] && { echo "$f"; return 0; }; done
    return 1
}
KOTLIN_HOME_GUESS="$(dirname "$(dirname "$(readlink -f "$(command -v kotlinc)")")")"
STDLIB="$(find_jar "${KOTLIN_STDLIB:-}" "$KOTLIN_HOME_GUESS/lib/kotlin-stdlib.jar" /usr/share/java/kotlin-stdlib.jar)" \
    || die "kotlin-stdlib.jar not found (set KOTLIN_STDLIB)"
JUNIT="$(find_jar "${JUNIT_JAR:-}" /usr/share/java/junit4.jar /usr/share/java/junit.jar)" \
    || die "junit4.jar not found; apt-get install -y junit4 (or set JUNIT_JAR)"
HAMCREST="$(find_jar "${HAMCREST_JAR:-}" /usr/share/java/hamcrest-core.jar /usr/share/java/hamcrest.jar /usr/share/java/hamcrest-all.jar)" \
    || die "hamcrest jar not found; apt-get install -y junit4 (or set HAMCREST_JAR)"

BUILD="$HERE/build/test-sh"
CLASSES="$BUILD/classes"
SOURCES=$(find src/main/kotlin src/test/kotlin -name '*.kt' | LC_ALL=C sort)
STAMP="$( (kotlinc -version 2>&1 | grep -i kotlinc; for f in $SOURCES; do echo "$f"; cat "$f"; done) | sha256sum | cut -d' ' -f1)"

if [ ! -f "$BUILD/stamp" ] || [ "$(cat "$BUILD/stamp")" != "$STAMP" ]; then
    rm -rf "$CLASSES" "$BUILD/stamp"
    mkdir -p "$CLASSES"
    echo "test.sh: compiling $(echo "$SOURCES" | wc -l) Kotlin files with $(kotlinc -version 2>&1 | grep -io 'kotlinc-jvm [^ ]*')" >&2
    # One kotlinc run for main and test sources: the compiler's start-up dominates.
    # C1-only JIT: the compiler runs briefly, so skipping C2 saves about a third of its time.
    JAVA_OPTS="${JAVA_OPTS:--XX:TieredStopAtLevel=1 -Xss4m}" kotlinc -nowarn -d "$CLASSES" -cp "$JUNIT:$HAMCREST" $SOURCES 2>&1 \
        | grep -v -e 'Options -Xverify:none and -noverify were deprecated' >&2 || true
    # kotlinc's status is lost in the pipe; a missing test class means compilation failed.
    ls "$CLASSES"/dev/bksdm/edge/engine/*Test.class >/dev/null 2>&1 || die "compilation failed"
    echo "$STAMP" > "$BUILD/stamp"
fi

TESTS=$(cd "$CLASSES" && find . -name '*Test.class' ! -name '*$*' | sed 's|^\./||; s|\.class$||; s|/|.|g' | LC_ALL=C sort)
[ -n "$TESTS" ] || die "no test classes found"
exec java -cp "$CLASSES:$HERE/src/test/resources:$STDLIB:$JUNIT:$HAMCREST" org.junit.runner.JUnitCore $TESTS
