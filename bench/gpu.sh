#!/usr/bin/env bash
# One short command for a machine with an NVIDIA GPU: install the CUDA extra, run the
# GPU-relevant tests and the benchmarks (each vs its NumPy baseline in the same run).
#   bash bench/gpu.sh            # ~5 minutes on one GPU
# Not run in CI (no GPU there). Prints the device, the test summary and the tables.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-gpu && .venv-gpu/bin/pip install -q -e ".[test,cuda12]"
py=.venv-gpu/bin/python
$py -c "import jax; print('devices:', jax.devices())"
# the engine's numerics on the GPU: exact truncation, kernels, modes, batch vs reference
$py -m pytest -q -p no:cacheprovider tests/test_exact_truncation.py tests/test_kernels.py \
  tests/test_modes.py tests/test_batch.py tests/test_truncation.py
$py bench/fit_batch.py --quick
