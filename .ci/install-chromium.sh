#!/usr/bin/env bash
# Install Debian's chromium for tests/test_report.py (the report opened in a real headless browser) when missing.
# Called by .ci/run. Uses apt only (no browser downloads from elsewhere); needs root or password-less sudo.
set -euo pipefail

for exe in chromium chromium-browser; do
    if command -v "$exe" >/dev/null 2>&1; then
        echo "chromium present: $("$exe" --version 2>/dev/null | head -n1)"
        exit 0
    fi
done

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium: no apt-get on this machine; install chromium with the system's package manager" >&2
    exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "install-chromium: need root (or password-less sudo) to run apt-get install chromium" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
chromium --version
