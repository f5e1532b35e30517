#!/usr/bin/env bash
# CI: the package as a new user installs it, `pip install .` with no extras, in a fresh venv
# (.venv-core/), then a short form of the README's first command and of each console script.
# Every step must exit 0 and write its outputs; one line per step with its wall time.
# A core module that imports a package only an extra brings (tqdm came with TFDS) fails here,
# while `.[test]` in .ci/run would hide it. TensorFlow must be absent.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
VENV=$REPO/.venv-core
WORK=$(mktemp -d "${TMPDIR:-/tmp}/drn-jax-core-install.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# The run's own compilation cache, in the default place under its own XDG cache folder, so a
# warm cache elsewhere on the machine cannot hide a compile, and nothing lands in ~/.cache.
unset DRN_JAX_COMPILATION_CACHE JAX_COMPILATION_CACHE_DIR
export XDG_CACHE_HOME=$WORK/cache JAX_PLATFORMS=cpu
PY=$VENV/bin/python
TOTAL_START=$(date +%s.%N)

# step NAME OUTPUT... -- COMMAND...: runs COMMAND from $WORK, then checks that each OUTPUT
# (relative to $WORK) exists and is not empty.
step() {
    local name=$1; shift
    local outputs=()
    while [[ $1 != -- ]]; do outputs+=("$1"); shift; done
    shift
    local start status=0 missing=()
    start=$(date +%s.%N)
    (cd "$WORK" && "$@") >"$WORK/$name.log" 2>&1 || status=$?
    local seconds
    seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    for output in "${outputs[@]}"; do
        [[ -s $WORK/$output ]] || missing+=("$output")
    done
    if (( status != 0 || ${#missing[@]} )); then
        echo "core install: $name FAILED in $seconds s (exit $status${missing:+; missing: ${missing[*]}})"
        tail -n 30 "$WORK/$name.log"
        exit 1
    fi
    echo "core install: $name ok in $seconds s"
}

step install installed.txt -- bash -c "rm -rf '$VENV' && python3.11 -m venv '$VENV' \
    && '$VENV/bin/pip' install -q '$REPO' && '$VENV/bin/pip' freeze >installed.txt"

# The installed package, not the source tree, and none of the extras' packages.
step packages packages.txt -- "$PY" -c "
import importlib.util, pathlib, sys
import drn_jax
where = pathlib.Path(drn_jax.__file__).resolve()
assert pathlib.Path(sys.prefix).resolve() in where.parents, f'drn_jax imported from {where}'
present = [name for name in ('tensorflow', 'tensorflow_datasets', 'jax2onnx', 'onnxruntime')
           if importlib.util.find_spec(name) is not None]
assert not present, f'extras installed: {present}'
pathlib.Path('packages.txt').write_text(str(where))"

# A photo: a crop of scikit-image's astronaut (a core dependency), as JPEG.
step photo photo.jpg -- "$PY" -c "
from PIL import Image
from skimage import data
Image.fromarray(data.astronaut()[40:136, 160:288]).save('photo.jpg', quality=90)"

# python -P: the script's folder (the source tree) is not put on sys.path.
step train.py run/summary.json run/config.json run/metrics.jsonl run/checkpoints/4 -- \
    "$PY" -P "$REPO/train.py" --workdir=run --config.num_train_steps=4 --config.batch_size=8 \
    --config.model.features=8 --config.model.modules_per_block=1 --config.data.hr_patch_size=32 \
    --config.data.val_limit=2 --config.log_every_steps=2 --config.checkpoint_every_steps=4 \
    --config.eval_every_steps=4
step eval.py run/eval/results.json run/eval/results.md -- "$PY" -P "$REPO/eval.py" --workdir=run
step drn-upscale upscaled/photo_x4.png -- "$VENV/bin/drn-upscale" photo.jpg --pretrained x4 \
    --output_dir upscaled --no_progress
step drn-export exported/model.jax_export exported/model_card.json exported/model_card.md -- \
    "$VENV/bin/drn-export" --pretrained=x4 --format=stablehlo --output_dir=exported
step pretrained-list pretrained.txt -- bash -c "'$PY' -m drn_jax.pretrained list >pretrained.txt \
    && grep -q '^x4:' pretrained.txt && grep -q '^x8:' pretrained.txt"
# The entry points wrote their compiled programs to the default cache folder.
step compilation-cache -- bash -c "[[ -n \$(ls -A cache/drn-jax/xla) ]]"
echo "core install: compilation cache: $(ls "$WORK/cache/drn-jax/xla" | wc -l) programs, \
$(du -sh "$WORK/cache/drn-jax/xla" | cut -f1)"

echo "core install: all steps ok in $(awk -v a="$TOTAL_START" -v b="$(date +%s.%N)" \
    'BEGIN { printf "%.0f", b - a }') s"
