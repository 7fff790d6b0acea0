#!/usr/bin/env bash
# Regenerate the committed gRPC/protobuf stubs from proto/ into src/.
# Usage: scripts/gen-protos.sh [OUTDIR]   (default: src; CI generates into a temp dir and diffs)
# The generator versions are pinned: the generated code requires protobuf >= the gencode version
# and grpcio >= GRPC_GENERATED_VERSION, which are the lower bounds stated in pyproject.toml.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/src}
venv=${GEN_VENV:-$here/.venv-gen}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "grpcio-tools==1.72.2" "mypy-protobuf==5.1.0"
fi
cd "$here/proto"
protos=$(find etcdwarden -name '*.proto' | sort)
"$venv/bin/python" -m grpc_tools.protoc -I. \
  --python_out="$out" \
  --grpc_python_out="$out" \
  --plugin=protoc-gen-mypy="$venv/bin/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$venv/bin/protoc-gen-mypy_grpc" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  $protos
# package markers for the generated tree
for d in $(cd "$out" && find etcdwarden/etcd/api -type d); do
  [ -f "$out/$d/__init__.py" ] || : > "$out/$d/__init__.py"
done
