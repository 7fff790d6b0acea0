#!/usr/bin/env bash
# Fetch Debian's `age` CLI and unpack it under <repo>/.cache/age/ (dpkg -x only; nothing installed
# system-wide). Idempotent. Prints the directory holding the `age` binary.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${AGE_DIR:-$repo/.cache/age}"
bindir="$dest/usr/bin"
if [[ -x "$bindir/age" ]]; then echo "$bindir"; exit 0; fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
cd "$work"
if ! apt-get download age >&2; then
  echo "fetch-age: download failed; running apt-get update and retrying" >&2
  apt-get update >&2
  apt-get download age >&2
fi
rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
dpkg -x ./age_*.deb "$dest.tmp"
rm -rf "$dest" && mv "$dest.tmp" "$dest"
[[ -x "$bindir/age" ]] || { echo "fetch-age: no age binary in the package" >&2; exit 1; }
echo "$bindir"
