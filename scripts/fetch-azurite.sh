#!/usr/bin/env bash
# Install Azurite, Microsoft's Azure Storage emulator, from the npm registry under <repo>/.cache/azurite/
# (`npm install --prefix`: nothing global, no install scripts run). Needs node >= 18 and npm.
# Pinned to 3.35.0, the newest release whose engines field admits Node 20 (3.36 wants 21, 3.37 wants 22).
# Idempotent. Prints the path of the `azurite-blob` executable (the blob service alone).
set -euo pipefail
version=3.35.0
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${AZURITE_DIR:-$repo/.cache/azurite}"
bin="$dest/node_modules/.bin/azurite-blob"
stamp="$dest/.installed-$version"
if [[ -x "$bin" && -f "$stamp" ]]; then echo "$bin"; exit 0; fi
mkdir -p "$(dirname "$dest")"
exec 9>"$dest.lock"  # one installer at a time (parallel test sessions)
flock 9
if [[ -x "$bin" && -f "$stamp" ]]; then echo "$bin"; exit 0; fi
for tool in node npm; do
  command -v "$tool" >/dev/null || { echo "fetch-azurite: $tool is not installed (apt-get install nodejs npm)" >&2; exit 1; }
done
rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
npm install --prefix "$dest.tmp" --no-audit --no-fund --ignore-scripts --loglevel=error "azurite@$version" >&2
[[ -x "$dest.tmp/node_modules/.bin/azurite-blob" ]] || { echo "fetch-azurite: no azurite-blob in the package" >&2; exit 1; }
touch "$dest.tmp/.installed-$version"
rm -rf "$dest" && mv "$dest.tmp" "$dest"
echo "$bin"
