#!/usr/bin/env bash
# Fail if the committed stubs under src/etcdwarden/etcd/api differ from a fresh generation.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$here/scripts/gen-protos.sh" "$tmp" >"$tmp.log" 2>&1 || { cat "$tmp.log" >&2; exit 1; }
if diff -r -x '__pycache__' "$tmp/etcdwarden/etcd/api" "$here/src/etcdwarden/etcd/api"; then
  echo "stubs are in sync with proto/"
else
  echo "generated stubs differ from proto/: run scripts/gen-protos.sh and commit" >&2
  exit 1
fi
