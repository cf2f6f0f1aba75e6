#!/usr/bin/env bash
# Open a fusion-evaluate HTML report in headless Chromium and save a full-page screenshot,
# to check by eye that the report renders (charts, tables, overlays) without network access.
#
# Usage:  scripts/check_report_browser.sh REPORT.html [SCREENSHOT.png] [WIDTH] [HEIGHT]
#   REPORT.html     the report written by `fusion-evaluate ... --out DIR` (DIR/report.html)
#   SCREENSHOT.png  where to write the screenshot (default: REPORT.png next to the report)
#   WIDTH, HEIGHT   window size in pixels (default 1280 x 4000: tall enough for every section)
#
# Chromium is looked up as chromium, chromium-browser or google-chrome; when none is found
# and apt-get is available (Debian/Ubuntu, as root), `apt-get install chromium` is run.
# Network is disabled for the page (--proxy-server to a dead port), so anything the report
# tried to fetch would be missing from the screenshot: the report must be self-contained.
# Exit status: 0 screenshot written, 1 bad arguments, 2 no browser, 3 screenshot failed.
set -euo pipefail

if [[ $# -lt 1 || ! -f "$1" ]]; then
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  exit 1
fi
report="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
shot="${2:-${report%.html}.png}"
width="${3:-1280}"
height="${4:-4000}"

find_browser() {
  for b in chromium chromium-browser google-chrome google-chrome-stable; do
    if command -v "$b" >/dev/null 2>&1; then command -v "$b"; return 0; fi
  done
  return 1
}

if ! browser="$(find_browser)"; then
  if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
    echo "chromium not found: installing it with apt-get" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
  fi
  browser="$(find_browser)" || { echo "no chromium available; install chromium" >&2; exit 2; }
fi

profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --user-data-dir="$profile" --proxy-server=127.0.0.1:9 --proxy-bypass-list='<-loopback>' \
  --window-size="${width},${height}" --screenshot="$shot" "file://${report}" >/dev/null 2>&1 || true

if [[ ! -s "$shot" ]]; then
  echo "screenshot failed: $shot was not written" >&2
  exit 3
fi
echo "screenshot: $shot"
