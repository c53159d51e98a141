"""The GPU machine's offline install (scripts/gpu-bundle.sh, scripts/gpu-install.sh), played
here by scripts/test-gpu-bundle.sh: a bundle for this Python, a plain virtual environment with
only the GPU machine's packages, onebit installed from the bundle with no index, one training
run. It downloads (a bundle for this Python, the venv's packages) and takes a minute or two,
and tests never download: it runs only when asked, ``ONEBIT_TEST_GPU_BUNDLE=1`` (what
``make gpu-bundle-test`` does)."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("ONEBIT_TEST_GPU_BUNDLE"),
    reason="downloads: run with ONEBIT_TEST_GPU_BUNDLE=1 (make gpu-bundle-test)",
)
def test_offline_install_from_bundle_trains(tmp_path):
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "test-gpu-bundle.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "offline install from the bundle: OK" in proc.stdout
    # the environment's onebit and pydantic, not the checkout's or this Python's
    assert f"onebit {tmp_path / 'venv'}" in proc.stdout
    assert (tmp_path / "run" / "metrics.jsonl").stat().st_size > 0
