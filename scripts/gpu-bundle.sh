#!/usr/bin/env bash
# The folder that benchmarks/gpu_check.sh installs onebit from on the GPU machine, which has
# Python 3.12 and a CUDA PyTorch (with numpy, pyyaml, tqdm and safetensors) but no network,
# none of onebit's other dependencies and no Fashion-MNIST. Run it here, with network:
#     bash scripts/gpu-bundle.sh [--python-version 3.12] [--out .gpu]      (make gpu-bundle)
# OUT/wheels/: the wheels of what that machine lacks, for Linux x86-64 and that Python: pydantic
# and its dependencies (read off each wheel's METADATA Requires-Dist), and setuptools, which
# builds onebit from the carried source (scripts/gpu-install.sh). Never torch: the machine's
# own CUDA build stays. OUT/fashion-mnist/: the four *-ubyte.gz files (31 MB), for data.root.
# The versions are the ones the tests run with here; one version of each.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(
    pydantic==2.13.4
    pydantic-core==2.46.4
    annotated-types==0.7.0
    typing-inspection==0.4.2
    typing-extensions==4.15.0
    setuptools==84.2.1
)
FILES="train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte"
PYTHON_VERSION=3.12
OUT=.gpu
while [ $# -gt 0 ]; do
    case "$1" in
        --python-version) PYTHON_VERSION=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        *) echo "usage: $0 [--python-version X.Y] [--out DIR]" >&2; exit 2 ;;
    esac
done

rm -rf "$OUT/wheels" "$OUT/fashion-mnist"
mkdir -p "$OUT/wheels" "$OUT/fashion-mnist"
python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version "$PYTHON_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$OUT/wheels" "${WHEELS[@]}"

bash scripts/install-data.sh >/dev/null
# where onebit looks, in its order; a raw file is gzipped (the bundle travels, 64 MiB at most)
for f in $FILES; do
    for root in data/fashion-mnist /usr/share/datasets/fashion-mnist; do
        if [ -e "$root/$f.gz" ]; then cp "$root/$f.gz" "$OUT/fashion-mnist/"; break; fi
        if [ -e "$root/$f" ]; then gzip -c "$root/$f" >"$OUT/fashion-mnist/$f.gz"; break; fi
    done
done
ls "$OUT/wheels"
echo "$OUT: $(du -sh "$OUT" | cut -f1) (Python $PYTHON_VERSION)"
