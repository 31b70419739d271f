#!/usr/bin/env bash
# Install Horovod 0.28.1 (its last release) from source for the TensorFlow already installed.
#
#   bash tools/install_horovod.sh cpu   # Gloo collectives on CPU (what ddcache verifies)
#   bash tools/install_horovod.sh gpu   # NCCL collectives on CUDA GPUs, Gloo for the control plane
#
# Why a script: 0.28.1 does not build against TensorFlow 2.21 as documented upstream.
#  * pip's isolated build environment cannot import TensorFlow, which Horovod's CMake queries
#    for its compile flags: the install needs --no-build-isolation (so its build dependencies
#    are installed here first).
#  * horovod/tensorflow/xla_mpi_ops.cc includes XLA headers that TF 2.21 wheels do not ship
#    (highwayhash/arch_specific.h). tools/horovod/xla_ops_guard.patch compiles that file only
#    when HOROVOD_BUILD_XLA_OPS is defined, which this script never does: CPU builds had only
#    includes there, and on GPU the XLA custom calls are opt-in at run time anyway
#    (HOROVOD_ENABLE_XLA_OPS); ddtrain trains in graph mode without XLA.
#
# Environment: HOROVOD_* variables you set yourself win over the defaults below (e.g.
# HOROVOD_NCCL_HOME, HOROVOD_WITH_MPI=1). MAKEFLAGS defaults to -j<cores> (Horovod's own
# default, -j8, needs more memory than a small machine has). The build takes ~9 min and ~1.2 GB
# on 2 cores. The source tarball and build directory live in a temporary directory that is
# removed at the end; HOROVOD_SRC_KEEP=DIR keeps them in DIR instead.
set -euo pipefail

variant="${1:-}"
case "$variant" in
    cpu|gpu) ;;
    *) echo "usage: bash tools/install_horovod.sh cpu|gpu" >&2; exit 2 ;;
esac

here="$(cd "$(dirname "$0")" && pwd)"
patch_file="$here/horovod/xla_ops_guard.patch"
version="0.28.1"
python="${PYTHON:-python}"

tf_version="$("$python" -c 'import tensorflow as tf; print(tf.__version__)' 2>/dev/null)" || {
    echo "install_horovod: TensorFlow is not importable with $python; install ddcache first (pip install -e .)" >&2
    exit 2
}
command -v cmake >/dev/null || { echo "install_horovod: cmake (>= 3.13) is needed: apt-get install cmake, or pip install cmake" >&2; exit 2; }
command -v patch >/dev/null || { echo "install_horovod: the 'patch' program is needed: apt-get install patch" >&2; exit 2; }
echo "install_horovod: Horovod $version ($variant) for TensorFlow $tf_version"

if [ -n "${HOROVOD_SRC_KEEP:-}" ]; then
    work="$HOROVOD_SRC_KEEP"; mkdir -p "$work"
else
    work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
fi

# Build dependencies (visible to the build because isolation is off) and Horovod's run-time ones.
"$python" -m pip install setuptools wheel cloudpickle psutil pyyaml packaging

"$python" -m pip download --no-deps --no-binary :all: "horovod==$version" -d "$work"
rm -rf "$work/horovod-$version"
tar -xzf "$work/horovod-$version.tar.gz" -C "$work"
patch -d "$work/horovod-$version" -p1 --forward < "$patch_file"

export HOROVOD_WITH_TENSORFLOW=1
export HOROVOD_WITHOUT_PYTORCH="${HOROVOD_WITHOUT_PYTORCH:-1}"
export HOROVOD_WITHOUT_MXNET="${HOROVOD_WITHOUT_MXNET:-1}"
export HOROVOD_WITH_GLOO=1
if [ -z "${HOROVOD_WITH_MPI:-}" ]; then export HOROVOD_WITHOUT_MPI=1; fi
if [ "$variant" = gpu ]; then
    export HOROVOD_GPU_OPERATIONS="${HOROVOD_GPU_OPERATIONS:-NCCL}"
else
    export HOROVOD_CPU_OPERATIONS="${HOROVOD_CPU_OPERATIONS:-GLOO}"
fi
export MAKEFLAGS="${MAKEFLAGS:--j$(nproc)}"

"$python" -m pip install --no-build-isolation --no-cache-dir --force-reinstall --no-deps "$work/horovod-$version"

# horovodrun prints one "[X]" per framework / controller it was built with.
check="$(horovodrun --check-build)"
echo "$check"
echo "$check" | grep -q '\[X\] TensorFlow' || { echo "install_horovod: Horovod was built without TensorFlow support" >&2; exit 1; }
echo "$check" | grep -q '\[X\] Gloo' || { echo "install_horovod: Horovod was built without Gloo" >&2; exit 1; }
if [ "$variant" = gpu ]; then
    echo "$check" | grep -q '\[X\] NCCL' || { echo "install_horovod: Horovod was built without NCCL" >&2; exit 1; }
fi
echo "install_horovod: done"
