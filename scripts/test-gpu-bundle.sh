#!/usr/bin/env bash
# The GPU machine's offline install, played here: a bundle for this machine's Python
# (scripts/gpu-bundle.sh --python-version X.Y, as .gpu is for 3.12), a plain virtual
# environment holding only what the GPU machine has of onebit's dependencies, onebit installed
# from the bundle with no index (scripts/gpu-install.sh), then one short training run on the
# bundle's Fashion-MNIST. Needs network for the bundle and the stand-in packages; a minute or two.
#     bash scripts/test-gpu-bundle.sh [WORK]      (default: a new temporary folder)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=$(realpath -m "${1:-$(mktemp -d)}")
mkdir -p "$WORK"
PY_VERSION=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')

bash scripts/gpu-bundle.sh --python-version "$PY_VERSION" --out "$WORK/bundle"
rm -rf "$WORK/venv"
python3 -m venv "$WORK/venv"
VENV_PYTHON=$WORK/venv/bin/python
# The GPU machine's own packages, which the bundle leaves out (torch: the CPU build here).
"$VENV_PYTHON" -m pip install --quiet torch==2.13.0 numpy pyyaml tqdm safetensors
if "$VENV_PYTHON" -c "import pydantic" 2>/dev/null; then
    echo "the stand-in environment already has pydantic: it would not test the bundle" >&2
    exit 1
fi
PYTHON=$VENV_PYTHON bash scripts/gpu-install.sh "$WORK/bundle"

cd "$WORK"  # away from the checkout: onebit and pydantic must come from the environment
"$VENV_PYTHON" - "$WORK/venv" <<'EOF'
import sys

import onebit
import pydantic

for module in (onebit, pydantic):
    assert module.__file__.startswith(sys.argv[1]), f"{module.__name__} from {module.__file__}"
print(f"onebit {onebit.__file__}, pydantic {pydantic.VERSION}: from the environment")
EOF
"$VENV_PYTHON" -m onebit train "$REPO/configs/fmnist/resnet20_recu.yaml" \
    --set schedule.epochs=1 --set data.subset=64 --set data.eval_subset=64 \
    --set data.batch_size=32 --set runtime.device=cpu --set runtime.compile=false \
    --set "data.root=$WORK/bundle/fashion-mnist" --out "$WORK/run"
test -s "$WORK/run/metrics.jsonl"
echo "offline install from the bundle: OK ($WORK)"
