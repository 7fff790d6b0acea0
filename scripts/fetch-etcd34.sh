#!/usr/bin/env bash
# Fetch Debian's etcd 3.4 server and client packages and unpack them under <repo>/.cache/etcd34/
# (dpkg -x only: nothing is installed system-wide, no service is started).
#
# Idempotent: when the binaries are already unpacked, nothing is downloaded.
# On success the only line on stdout is the directory holding etcd and etcdctl.
# `apt-get update` is run only when the first download attempt fails (stale package lists).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${ETCD34_DIR:-$repo/.cache/etcd34}"
bindir="$dest/usr/bin"

if [[ -x "$bindir/etcd" && -x "$bindir/etcdctl" ]]; then
    echo "$bindir"
    exit 0
fi

command -v apt-get >/dev/null || { echo "fetch-etcd34: apt-get not found" >&2; exit 1; }
command -v dpkg >/dev/null || { echo "fetch-etcd34: dpkg not found" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # lets apt-get download sandboxed as _apt
cd "$work"

download() {
    apt-get download etcd-server etcd-client >&2
}

if ! download; then
    echo "fetch-etcd34: download failed; running apt-get update and retrying" >&2
    apt-get update >&2
    download
fi

rm -rf "$dest.tmp"
mkdir -p "$dest.tmp"
for deb in ./*.deb; do
    dpkg -x "$deb" "$dest.tmp"
done
if [[ ! -x "$dest.tmp/usr/bin/etcd" ]]; then
    echo "fetch-etcd34: the packages did not contain usr/bin/etcd" >&2
    rm -rf "$dest.tmp"
    exit 1
fi
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "$bindir"
