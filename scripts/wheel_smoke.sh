#!/usr/bin/env bash
# Build the wheel, install it (no dependencies) into a throwaway venv that borrows .venv's packages
# through a .pth file, and use it from outside the repository: --version, list, presets by name.
# Run by .ci/run after the tests; about 20 s. WORK=DIR keeps the files there (default: a temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=$REPO/.venv/bin/python
WORK=${WORK:-$(mktemp -d)}
start=$(date +%s)
rm -rf "$WORK/wheel" "$WORK/venv" "$WORK/cwd" build   # build/: setuptools would reuse stale copies
"$PY" -m pip wheel . --no-deps --no-build-isolation --quiet -w "$WORK/wheel"
WHEEL=$(ls "$WORK"/wheel/rankwise-*.whl)
python3 -m venv --without-pip "$WORK/venv"
"$PY" -m pip --python "$WORK/venv/bin/python" install --quiet --no-deps "$WHEEL"
SITE=$("$WORK/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
BORROWED=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$BORROWED" > "$SITE/borrowed_from_dotvenv.pth"   # appended after the venv's own packages
mkdir -p "$WORK/cwd" && cd "$WORK/cwd"                     # no configs/ here: presets come from the wheel
export PYTHONPATH= OMP_NUM_THREADS=1
RW=$WORK/venv/bin/rankwise
"$RW" --version
"$RW" list > list.txt
grep -q "text_mtil_quickstart" list.txt || { echo "wheel smoke: presets missing from rankwise list" >&2; exit 1; }
"$WORK/venv/bin/python" - "$SITE" <<'PY'
import sys
from pathlib import Path

import rankwise
from rankwise.config import load_config
from rankwise.config_presets import resolve_config

site = Path(sys.argv[1]).resolve()
assert Path(rankwise.__file__).resolve().is_relative_to(site), rankwise.__file__
for argument in ("text_mtil_quickstart", "configs/text_mtil_quickstart.yaml"):
    path = resolve_config(argument)
    assert path.resolve().is_relative_to(site / "rankwise" / "configs"), path
    print(f"{argument} -> {path.relative_to(site)}: {load_config(path).name}")
PY
"$RW" run toy_lora --quiet --set train.iterations=4 --set train.checkpoint_every=4 --set output.dir=run | tail -1
echo "wheel smoke: $(basename "$WHEEL") $(du -k "$WHEEL" | cut -f1) KiB, $(( $(date +%s) - start )) s"
