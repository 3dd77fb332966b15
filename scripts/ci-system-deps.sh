#!/usr/bin/env bash
# System packages the serving tests use, from Debian: Chromium (the operator-page browser test, driven by
# Playwright with executable_path=/usr/bin/chromium) and PostgreSQL (a throwaway server on loopback).
# Idempotent: installs only what is missing.  Never fails the build: where it cannot install, it says why
# and the tests that need the package skip with the reason.
set -u

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
fc-list 2>/dev/null | grep -qi dejavu || missing+=(fonts-dejavu-core)

if [ ${#missing[@]} -eq 0 ]; then
    echo "ci-system-deps: chromium, postgresql and fonts already installed"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "ci-system-deps: cannot install ${missing[*]}: not root and no password-less sudo;" \
         "the browser/PostgreSQL tests will skip with the reason" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ci-system-deps: cannot install ${missing[*]}: no apt-get (not a Debian system);" \
         "the browser/PostgreSQL tests will skip with the reason" >&2
    exit 0
fi

echo "ci-system-deps: installing ${missing[*]} from Debian"
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if $SUDO apt-get update -qq >"$log" 2>&1 \
   && $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$log" 2>&1; then
    echo "ci-system-deps: installed ${missing[*]}"
else
    echo "ci-system-deps: apt-get could not install ${missing[*]} (last lines below);" \
         "the browser/PostgreSQL tests will skip with the reason" >&2
    tail -5 "$log" >&2
fi
rm -f "$log"
exit 0
