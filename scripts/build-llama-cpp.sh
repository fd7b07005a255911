#!/usr/bin/env bash
# Build the pinned llama.cpp toolchain (CPU) from the vendor/llama.cpp tree of the
# llama-cpp-python sdist. One source for the local cache, CI and Dockerfile.convert.
#
#   scripts/build-llama-cpp.sh [DEST]
#
# DEST defaults to $TUNESHIP_CACHE_DIR/llama.cpp/$LLAMA_CPP_PYTHON_VERSION
# (TUNESHIP_CACHE_DIR defaults to ~/.cache/tuneship). The finished tree is moved into
# place only when every binary built, so an interrupted build leaves nothing that
# looks usable; a second run with a complete DEST returns at once.
set -euo pipefail

version="${LLAMA_CPP_PYTHON_VERSION:-$(cat "$(dirname "$0")/../services/tuneship/common/llama-cpp-python.version")}"
cache="${TUNESHIP_CACHE_DIR:-$HOME/.cache/tuneship}"
dest="${1:-$cache/llama.cpp/$version}"
jobs="${BUILD_JOBS:-$(nproc)}"
targets=(llama-quantize llama-imatrix llama-perplexity llama-server llama-cli)

bindings="python/llama_cpp/llama_cpp.py"
if [ -f "$dest/toolchain.json" ] && [ -f "$dest/$bindings" ]; then
  echo "llama.cpp toolchain $version already built in $dest"
  exit 0
fi

fetch_sdist() {  # $1: directory to download into
  echo "fetching llama-cpp-python==$version sdist (source only)"
  python3 -m pip download --quiet --no-binary :all: --no-deps --no-build-isolation \
    "llama-cpp-python==$version" -d "$1" 2>/dev/null \
    || python3 -m pip download --quiet --no-binary :all: --no-deps "llama-cpp-python==$version" -d "$1"
}

# The sdist's own ctypes bindings of libllama (the low-level module only): tuneship
# scores GGUFs on exact token ids through them, against the libllama built here.
add_bindings() {  # $1: sdist tarball, $2: toolchain tree
  local tmp
  tmp="$(mktemp -d "$2/.bindings.XXXXXX")"
  tar -xzf "$1" -C "$tmp" "llama_cpp_python-$version/llama_cpp/llama_cpp.py" \
    "llama_cpp_python-$version/llama_cpp/_ctypes_extensions.py"
  mkdir -p "$tmp/python/llama_cpp"
  mv "$tmp/llama_cpp_python-$version/llama_cpp/"*.py "$tmp/python/llama_cpp/"
  echo "# llama-cpp-python $version: low-level bindings only (import llama_cpp.llama_cpp)" \
    >"$tmp/python/llama_cpp/__init__.py"
  rm -rf "$2/python"
  mv "$tmp/python" "$2/python"
  rm -rf "$tmp"
}

if [ -f "$dest/toolchain.json" ]; then  # built before the bindings were part of it
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  fetch_sdist "$tmp"
  add_bindings "$tmp/llama_cpp_python-$version.tar.gz" "$dest"
  echo "llama.cpp Python bindings added to $dest"
  exit 0
fi

work="$(mktemp -d "${dest%/*}/.build-$version.XXXXXX" 2>/dev/null || { mkdir -p "${dest%/*}"; mktemp -d "${dest%/*}/.build-$version.XXXXXX"; })"
trap 'rm -rf "$work"' EXIT

fetch_sdist "$work/sdist"
tar -xzf "$work"/sdist/llama_cpp_python-"$version".tar.gz -C "$work" \
  "llama_cpp_python-$version/vendor/llama.cpp" "llama_cpp_python-$version/CHANGELOG.md"
add_bindings "$work/sdist/llama_cpp_python-$version.tar.gz" "$work"
mv "$work/llama_cpp_python-$version/vendor/llama.cpp" "$work/src"
# The sdist carries no git metadata; its changelog names the vendored commit.
commit="$(grep -m1 -oE 'llama\.cpp@[0-9a-f]{7,40}' "$work/llama_cpp_python-$version/CHANGELOG.md" | cut -d@ -f2 || true)"
rm -rf "$work/sdist" "$work/llama_cpp_python-$version"

echo "configuring llama.cpp ${commit:-unknown} (CPU, GGML_NATIVE=OFF)"
cmake -S "$work/src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_COMMIT="${commit:-unknown}" \
  -DCMAKE_INSTALL_RPATH='$ORIGIN' -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON >"$work/cmake.log"
echo "building ${targets[*]} with $jobs jobs (about 6 minutes on 2 cores)"
cmake --build "$work/build" -j"$jobs" --target "${targets[@]}" >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log"; exit 1; }

mkdir -p "$work/bin"
for t in "${targets[@]}"; do cp "$work/build/bin/$t" "$work/bin/"; done
cp -P "$work"/build/bin/lib*.so* "$work/bin/"
rm -rf "$work/build"
"$work/bin/llama-quantize" --help >/dev/null 2>&1 || [ $? -le 1 ]
cat >"$work/toolchain.json" <<JSON
{"llama_cpp_python": "$version", "llama_cpp_commit": "${commit:-unknown}", "targets": ["${targets[*]// /\", \"}"]}
JSON
rm -rf "$dest"
mv "$work" "$dest"
trap - EXIT
echo "llama.cpp toolchain ready in $dest"
