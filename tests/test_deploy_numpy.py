"""A deployment target without PyTorch: ``import onebit`` gives ``onebit.deploy.load``, which
runs a ``.onebit`` file with numpy arrays in and out (the C runtime through ctypes), and
predicts what the model predicts."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import onebit
from onebit.input_spec import InputSpec

SCRIPT = """
import json, sys
sys.modules["torch"] = None  # as if PyTorch were not installed: importing it fails
import numpy as np
import onebit
model = onebit.deploy.load(sys.argv[1])
images = np.load(sys.argv[2])
print(json.dumps({
    "classes": model.predict(images).tolist(),
    "logits": model(model.preprocess(images)).tolist(),
    "api": sorted(onebit.__all__),
}))
"""


@pytest.mark.parametrize("transform", [None, "resize_crop"])
def test_load_and_predict_without_pytorch(tmp_path, transform):
    """The registry's input (Fashion-MNIST's 28x28, padded), and an image-folder-style one whose
    raw images of another size are resized and cropped in numpy."""
    torch.manual_seed(0)
    model = onebit.create_model("resnet20", method="recu", num_classes=10, in_chans=1)
    for _ in range(3):  # BatchNorm statistics of its own
        model(torch.randn(8, 1, 32, 32))
    model.eval()
    path = tmp_path / "r20.onebit"
    spec = InputSpec(1, 32, (0.3,), (0.4,), transform) if transform else None
    onebit.deploy.export(model, path, input_spec=spec)
    side = (45, 40) if transform else (28, 28)
    images = np.random.default_rng(0).integers(0, 256, (6, *side), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path), str(tmp_path / "images.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout)
    assert got["api"] == ["deploy", "errors"]
    deployed = onebit.deploy.load(path)
    x = deployed.preprocess(images)
    with torch.no_grad():
        expected = model(torch.from_numpy(x))
    np.testing.assert_allclose(got["logits"], expected.numpy(), rtol=1e-4, atol=1e-4)
    assert got["classes"] == expected.argmax(1).tolist()
