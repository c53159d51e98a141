#!/usr/bin/env bash
# Install Fashion-MNIST, the dataset of `make demo` and of the tests, where it is missing.
# Debian/Ubuntu: the package dataset-fashion-mnist (files in /usr/share/datasets/fashion-mnist).
# Elsewhere: says which four files to put in data/fashion-mnist/ (onebit looks there too).
set -euo pipefail
SYSTEM=/usr/share/datasets/fashion-mnist
LOCAL=data/fashion-mnist
FILES="train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte"

have() {  # every file, gzipped or raw, in folder $1
    for f in $FILES; do [ -e "$1/$f.gz" ] || [ -e "$1/$f" ] || return 1; done
}

if have "$SYSTEM" || have "$LOCAL"; then
    echo "Fashion-MNIST: found"
    exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "Fashion-MNIST: installing the Debian package dataset-fashion-mnist"
    $SUDO apt-get update
    $SUDO apt-get install -y dataset-fashion-mnist
    have "$SYSTEM" && exit 0
fi
echo "Fashion-MNIST not found and not installable here. Put these four files, from" >&2
echo "https://github.com/zalandoresearch/fashion-mnist (data/fashion/), in $LOCAL/:" >&2
for f in $FILES; do echo "    $f.gz" >&2; done
exit 1
