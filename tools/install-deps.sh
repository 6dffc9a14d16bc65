#!/usr/bin/env bash
# Installs, with apt, the Debian packages qtune needs to build, test and plot.
# Idempotent: packages already installed are left alone, and apt is only run
# when something is missing. Says what it did. The CUDA toolkit is not a
# Debian package here: CMake uses it when it is installed (/usr/local/cuda).
set -euo pipefail

packages=(
  build-essential   # gcc, g++, make
  cmake
  pkg-config
  libgsl-dev        # RNG, quasi-random sequences, special functions
  libopenblas-dev   # BLAS
  liblapacke-dev    # LAPACK C interface (Cholesky, SVD)
  libyaml-dev       # search spaces, hubs, configs
  libjansson-dev    # JSON: meta-datasets, journals, safetensors headers
  libpng-dev        # image folders
  libjpeg-dev
  zlib1g-dev        # gzip-compressed IDX files
  libcunit1-dev     # test suites
  gnuplot-nox       # plots
)

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$package")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages are installed"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    echo "install-deps: not root and no sudo; run as root: apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install-deps: installed ${missing[*]}"
