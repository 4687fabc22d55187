#!/usr/bin/env bash
# The GPU checks in one run, for a machine lent for a few minutes: the CUDA tests, a training step
# with each fast backend of the clustering primitive, this project against the original on the
# GPU (when a checkout of it is given), the model, the clustering primitive and DCNv2 with
# --device cuda, then the rest of the test suite. Every step has its own time limit and writes its log
# (and JSON) into OUTDIR; a step that fails or runs out of time does not stop the next.
#
#   bash benchmarks/gpu_check.sh OUTDIR [ORIGINAL_CHECKOUT]
#
# PYTHON (default python) is the interpreter. STEPS="cuda_tests primitive_backends ..." runs only
# the steps named (their limits add up to more than one call of a lent machine may take).
# benchmarks/RESULTS.md ("On a GPU") shows what the first run gave.
set -u
if [[ $# -lt 1 ]]; then
  echo "usage: bash benchmarks/gpu_check.sh OUTDIR [ORIGINAL_CHECKOUT]" >&2
  exit 2
fi
OUT="$1"
ORIGINAL="${2:-}"
PY="${PYTHON:-python}"
cd "$(dirname "$0")/.."
if ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check: $PY's torch sees no CUDA device; nothing to check here" >&2
  exit 1
fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

# step NAME SECONDS COMMAND...: run it with its limit, its output in OUTDIR/NAME.log, and say
# how it ended
step() {
  local name="$1" limit="$2"
  shift 2
  if [[ -n "${STEPS:-}" && " $STEPS " != *" $name "* ]]; then
    return
  fi
  echo "== $name (at most ${limit} s)"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc$([[ $rc == 124 ]] && echo ', out of time')"
  tail -n 25 "$OUT/$name.log"
}

P=coco/panoptic-segmentation
step cuda_tests 300 "$PY" -m pytest -q -m cuda -p no:cacheprovider --tb=short tests projects
# the GPU default of the clustering primitive ("unfold") against the previous one ("blocked"): a
# training step with each, first, since it is what the GPU default rests on
step primitive_backends 150 "$PY" benchmarks/bench_model.py --device cuda --skip-eval --train-repeats 10 \
  --train-modes "point decoding, blocked primitive" "point decoding, unfold primitive" \
  "full decoding, blocked primitive" "full decoding, unfold primitive" --json "$OUT/primitive_backends.json"
if [[ -n "$ORIGINAL" ]]; then
  step vs_original 300 "$PY" benchmarks/original/compare_outputs.py --original "$ORIGINAL" --device cuda \
    --time 800x1216 --repeats 20 --rounds 2 \
    $P/hcformer_R50_bs16_50ep.yaml $P/hcformer+_R50_bs16_100ep.yaml $P/swin/hcformer_swin_small_bs16_50ep.yaml
fi
step model 240 "$PY" benchmarks/bench_model.py --device cuda --repeats 10 --train-repeats 5 \
  --models "HCFormer R50 level 3" "HCFormer+ R50" "HCFormer Swin-S" "HCFormer HC-SViT-S" --json "$OUT/model.json"
for dtype in float32 bfloat16; do
  step "clustering_$dtype" 90 "$PY" benchmarks/bench_local_clustering.py --device cuda --dtype "$dtype" \
    --sizes 128 256 --channels 100 --grids 2:3 4:3 --large-grid-sizes 256 --impls blocked unfold loop \
    --layout nchw --repeats 10 --json "$OUT/clustering_$dtype.json"
done
step deform_conv 90 "$PY" benchmarks/bench_deform_conv.py --device cuda --repeats 10 --json "$OUT/deform_conv.json"
# the rest of the suite (slow tests included) on a machine that has a GPU: what torch seeing CUDA
# changes for the tests that run on the CPU
step suite 300 "$PY" -m pytest -q -n auto -p no:cacheprovider --tb=short -m "not cuda" tests projects
