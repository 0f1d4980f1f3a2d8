#!/usr/bin/env bash
# make image: build the qrl image with nothing but the package registries (no image registry).
#   deploy/docker/build.sh IMAGE TORCH_VERSION [TORCH_INDEX]
# 1. qrl-base:bookworm, once: a minimal Debian bookworm from debootstrap, imported into Docker.
# 2. build/wheels: qrl and every dependency as wheels, made with this machine's pip (so its index
#    settings apply); torch==TORCH_VERSION from TORCH_INDEX when given (a CUDA wheel index for a GPU
#    learner image), else from pip's usual indexes (pin a CPU build there: see the Makefile).
# 3. docker build (the Dockerfile installs the wheels offline).
set -euo pipefail
image=${1:?image tag}; torch_version=${2:?torch version}; torch_index=${3:-}
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
python=${PYTHON_FOR_WHEELS:-.venv/bin/python}
start=$(date +%s)

if ! docker image inspect qrl-base:bookworm >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || { echo "make image: needs debootstrap (apt-get install debootstrap)" >&2; exit 2; }
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase bookworm "$rootfs" >/dev/null
    # What a runtime never reads: the downloaded packages, documentation, translations.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* \
           "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    tar -C "$rootfs" -c . | docker import - qrl-base:bookworm >/dev/null
    echo "make image: base qrl-base:bookworm imported ($(du -sh "$rootfs" | cut -f1) debootstrapped)"
fi

rm -rf build/wheels
torch_args=()
[ -n "$torch_index" ] && torch_args=(--extra-index-url "$torch_index")
mkdir -p build
if ! "$python" -m pip wheel --quiet --wheel-dir build/wheels "${torch_args[@]}" . "torch==$torch_version" \
        > build/wheels.log 2>&1; then
    tail -20 build/wheels.log >&2; exit 1
fi
# The image's Python is Debian bookworm's 3.11: the wheels must be for it.
if ! ls build/wheels | grep -q "^torch-.*cp311"; then
    echo "make image: no CPython 3.11 torch wheel in build/wheels (build with a Python 3.11 venv)" >&2; exit 2
fi

if ! docker build --network host -t "$image" . > build/docker-build.log 2>&1; then
    tail -20 build/docker-build.log >&2; exit 1
fi
echo "make image: $image built in $(( $(date +%s) - start )) s, $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1 / 1e6}')"
