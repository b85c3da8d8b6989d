#!/usr/bin/env bash
# Copy an exported bundle to a connected Android device, where the demo app finds it:
#   /sdcard/Android/data/dev.bksdm.edge.demo/files/bundles/NAME
# Usage: push_bundle.sh BUNDLE_DIR [NAME]
#   NAME defaults to the folder's name. Set ANDROID_SERIAL to choose among several devices.
set -euo pipefail

APP_ID="dev.bksdm.edge.demo"
die() { echo "push_bundle.sh: error: $*" >&2; exit 1; }

[ $# -ge 1 ] && [ $# -le 2 ] || { sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
SRC="${1%/}"
NAME="${2:-$(basename "$SRC")}"

[ -d "$SRC" ] || die "'$SRC' is not a folder"
[ -f "$SRC/manifest.json" ] || die "'$SRC' has no manifest.json: not a bundle (export one with 'bksdm-edge export')"
grep -Eq '"complete"[[:space:]]*:[[:space:]]*true' "$SRC/manifest.json" \
    || die "'$SRC/manifest.json' does not say \"complete\": true: the export did not finish"
case "$NAME" in
    ""|*/*|.*) die "bad bundle name '$NAME'" ;;
esac

command -v adb >/dev/null 2>&1 || die "adb not found: install Android platform-tools (e.g. apt-get install -y adb) and put adb on PATH"
STATE="$(adb get-state 2>&1 || true)"
if [ "$STATE" != "device" ]; then
    adb devices -l >&2 || true
    case "$STATE" in
        *"more than one"*) die "several devices connected: set ANDROID_SERIAL to one of the serials above" ;;
        *unauthorized*) die "device unauthorized: accept the USB debugging prompt on the phone" ;;
        *) die "no device connected (adb get-state: $STATE); enable USB debugging and connect the phone" ;;
    esac
fi
adb shell pm path "$APP_ID" >/dev/null 2>&1 \
    || echo "push_bundle.sh: warning: $APP_ID is not installed yet; install the app before opening the bundle" >&2

DEST="/sdcard/Android/data/$APP_ID/files/bundles/$NAME"
SIZE="$(du -sh "$SRC" | cut -f1)"
echo "Pushing $SRC ($SIZE) to $DEST"
adb shell rm -rf "'$DEST.partial'" >/dev/null
adb shell mkdir -p "'$DEST.partial'" || die "cannot create $DEST.partial on the device"
# Push into a temporary folder and rename, so the app never sees a half-copied bundle.
adb push "$SRC/." "$DEST.partial/" || die "adb push failed"
LOCAL_COUNT="$(find "$SRC" -type f | wc -l | tr -d ' ')"
REMOTE_COUNT="$(adb shell "find '$DEST.partial' -type f | wc -l" | tr -d '\r ')"
[ "$LOCAL_COUNT" = "$REMOTE_COUNT" ] || die "copied $REMOTE_COUNT of $LOCAL_COUNT files"
adb shell "rm -rf '$DEST' && mv '$DEST.partial' '$DEST'" || die "cannot move the bundle into place"
echo "Done: $LOCAL_COUNT files. In the app press Refresh and pick '$NAME' (files are verified against the manifest on first load)."
