PYTHON ?= python3
EPOCHS ?=
DEMO_OUT ?= runs/demo
# Without EPOCHS: one epoch on the first 12,800 training images (100 steps of 128; a few
# minutes on a 2-core CPU). EPOCHS=40: the full recipe on all 60,000 images.
ifeq ($(strip $(EPOCHS)),)
DEMO_SET = --set schedule.epochs=1 --set data.subset=12800
else
DEMO_SET = --set schedule.epochs=$(EPOCHS)
endif

LARQ_VENV ?= .venv-larq

.PHONY: install data test lint format demo bench larq-venv lce-venv gpu-bundle gpu-bundle-test

# torch==2.13.0 when no torch is installed (an open range would pull a multi-GB CUDA build),
# the package with its test tools, and the Fashion-MNIST files of the demo and the tests.
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e ".[dev]"
	@bash scripts/install-data.sh

data:
	@bash scripts/install-data.sh

test:
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check src tests benchmarks
	$(PYTHON) -m ruff format --check src tests benchmarks

demo:
	rm -rf $(DEMO_OUT)/resnet20_recu $(DEMO_OUT)/resnet20_fp
	$(PYTHON) -m onebit train configs/fmnist/resnet20_recu.yaml $(DEMO_SET) --out $(DEMO_OUT)/resnet20_recu
	$(PYTHON) -m onebit train configs/fmnist/resnet20_fp.yaml $(DEMO_SET) --out $(DEMO_OUT)/resnet20_fp

bench:
	$(PYTHON) benchmarks/kernel_speed.py
	$(PYTHON) benchmarks/train_speed.py

# Every figure of the C runtime's deployment goals, one thread, about 3 minutes
# (benchmarks/README.md; LCE's row needs .venv-larq with larq-compute-engine).
.PHONY: bench-deploy
bench-deploy:
	$(PYTHON) benchmarks/deploy_speed.py

# Larq in its own virtual environment, for benchmarks/larq_speed.py (never a test dependency).
larq-venv:
	$(PYTHON) -m venv $(LARQ_VENV)
	$(LARQ_VENV)/bin/pip install "larq==0.13.3" "tensorflow==2.16.1" "tf-keras==2.16.0"

# The same venv plus Larq Compute Engine and larq-zoo (its Bi-Real-Net-18, random init), for
# benchmarks/lce_speed.py (never a test dependency). larq-zoo pins protobuf 3.20.3 and
# absl-py 1.4.0, both within TensorFlow 2.16.1's range; larq_speed.py runs unchanged.
lce-venv: larq-venv
	$(LARQ_VENV)/bin/pip install "larq-compute-engine==0.16.0" "larq-zoo==2.4.0"

# The GPU machine has no network: .gpu holds the wheels it lacks and Fashion-MNIST, for
# benchmarks/gpu_check.sh (benchmarks/README.md). gpu-bundle-test plays that install here.
gpu-bundle:
	bash scripts/gpu-bundle.sh

gpu-bundle-test:
	bash scripts/test-gpu-bundle.sh

format:
	$(PYTHON) -m ruff check --fix src tests benchmarks
	$(PYTHON) -m ruff format src tests benchmarks
