#!/bin/sh
# Install Debian's Chromium for the browser test of the HTML report, unless a Chromium is already there.
# Fails loudly when it cannot, so that the test command stops instead of skipping the browser test.
set -e
for candidate in chromium chromium-browser google-chrome; do
    if command -v "$candidate" >/dev/null 2>&1; then
        echo "install-chromium: found $(command -v "$candidate")"
        exit 0
    fi
done
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium: no Chromium and no apt-get; install Chromium by hand (the browser test needs it)" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    SUDO="sudo"
fi
echo "install-chromium: installing Debian's chromium (a minute or two)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
command -v chromium
