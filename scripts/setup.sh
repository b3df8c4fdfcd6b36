#!/usr/bin/env bash
# One-time set-up for building and running smoothcert on a Debian machine.
#
# - libtorch 2.11.0, unpacked from PyPI's torch==2.11.0 wheel (its torch/ folder
#   has libtorch's layout) into a cache outside the clone, shared by every clone
#   and by CI: ${SMOOTHCERT_CACHE:-~/.cache/smoothcert}/libtorch-2.11.0
# - Debian's dataset-fashion-mnist (the files land in /usr/share/datasets/fashion-mnist)
# - .cargo/config.toml (git-ignored) pointing tch's build at that libtorch, so that
#   plain `cargo build` / `cargo test` work afterwards. The binary carries an
#   rpath to the same folder (build.rs), so nothing needs exporting at run time.
#
# Idempotent: a second run only checks what is there.
set -euo pipefail

TORCH_VERSION=2.11.0
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${SMOOTHCERT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/smoothcert}
libtorch="$cache/libtorch-$TORCH_VERSION"

log() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else return 1
    fi
}

apt_updated=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || return 1
    if [ "$apt_updated" = 0 ]; then
        as_root apt-get update -qq >/dev/null || return 1
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

install_libtorch() {
    if [ -f "$libtorch/lib/libtorch_cpu.so" ] && [ -f "$libtorch/lib/libcudart.so.13" ] \
        && [ -f "$libtorch/build-version" ]; then
        return 0
    fi
    log "installing libtorch $TORCH_VERSION from the torch==$TORCH_VERSION wheel into $libtorch"
    mkdir -p "$cache"
    local tmp
    tmp=$(mktemp -d "$cache/tmp.XXXXXX")
    trap 'rm -rf "$tmp"' RETURN
    local pip=(python3 -m pip)
    "${pip[@]}" --version >/dev/null 2>&1 || apt_install python3-pip || {
        log "error: pip is needed to fetch the torch wheel"; exit 1; }
    "${pip[@]}" download --quiet --no-deps --only-binary=:all: \
        --dest "$tmp/wheel" "torch==$TORCH_VERSION"
    # libtorch_cpu.so itself needs the CUDA runtime and CUPTI (its profiler), even
    # on a machine without a GPU; the wheel's own dependencies carry them. Its
    # RPATH includes $ORIGIN, so they go beside it.
    "${pip[@]}" download --quiet --no-deps --only-binary=:all: \
        --dest "$tmp/cuda" "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cupti==13.0.85"
    local wheel
    wheel=$(ls "$tmp"/wheel/torch-"$TORCH_VERSION"-*.whl)
    # Only libtorch's part of the wheel: shared libraries and C++ headers.
    python3 - "$tmp/unpacked" "$wheel" "$tmp"/cuda/*.whl <<'PY'
import os, shutil, sys, zipfile
dest, torch_wheel, cuda_wheels = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(torch_wheel) as z:
    for info in z.infolist():
        if info.filename.startswith(("torch/lib/", "torch/include/", "torch/share/cmake/")):
            z.extract(info, dest)
lib = os.path.join(dest, "torch", "lib")
for wheel in cuda_wheels:
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            base = os.path.basename(name)
            if base.startswith(("libcudart.so", "libcupti.so")):
                with z.open(name) as src, open(os.path.join(lib, base), "wb") as dst:
                    shutil.copyfileobj(src, dst)
PY
    echo "$TORCH_VERSION" >"$tmp/unpacked/torch/build-version"
    rm -rf "$libtorch"
    # Rename last so that an interrupted set-up never leaves a half-unpacked libtorch.
    mv "$tmp/unpacked/torch" "$libtorch"
}

install_dataset() {
    if [ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
        return 0
    fi
    log "installing Debian's dataset-fashion-mnist"
    apt_install dataset-fashion-mnist || log "warning: could not install dataset-fashion-mnist (tests that need it will fail)"
}

write_cargo_config() {
    mkdir -p "$repo_root/.cargo"
    local cfg="$repo_root/.cargo/config.toml"
    local want
    want=$(cat <<CFG
# Written by scripts/setup.sh; not tracked. Points tch's build at the cached libtorch.
[env]
LIBTORCH = "$libtorch"
LIBTORCH_CXX11_ABI = "1"
CFG
)
    if [ ! -f "$cfg" ] || [ "$(cat "$cfg")" != "$want" ]; then
        printf '%s\n' "$want" >"$cfg"
        log "wrote $cfg"
    fi
}

install_libtorch
install_dataset
write_cargo_config
log "ready: libtorch $TORCH_VERSION at $libtorch"
