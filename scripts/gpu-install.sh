#!/usr/bin/env bash
# Installs onebit from this checkout into $PYTHON (default python3) with no network: every
# dependency that Python lacks comes from BUNDLE/wheels (scripts/gpu-bundle.sh), and the
# build of onebit takes its setuptools from there too. What the Python already has (torch,
# numpy, ...) stays as it is. pip's own settings are left out, so no index or other folder
# of wheels is read: a missing wheel fails the install here, not later at an import.
#     bash scripts/gpu-install.sh [BUNDLE]      (default .gpu)
set -euo pipefail
BUNDLE=$(realpath -m "${1:-$(dirname "$0")/../.gpu}")
cd "$(dirname "$0")/.."
[ -d "$BUNDLE/wheels" ] || {
    echo "no $BUNDLE/wheels: run 'make gpu-bundle' (scripts/gpu-bundle.sh) with network first" >&2
    exit 1
}
for var in $(compgen -e | grep '^PIP_' || true); do unset "$var"; done
PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 "${PYTHON:-python3}" -m pip install \
    --quiet --no-index --find-links "$BUNDLE/wheels" --no-cache-dir .
