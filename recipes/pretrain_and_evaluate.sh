#!/usr/bin/env bash
# The paper's pipeline on one GPU machine: pretrain MAE-AST, evaluate it on the six tasks with the linear and
# fine-tuned probes, evaluate an SSAST checkpoint the same way, and write the comparison table and chart.
#
#   recipes/pretrain_and_evaluate.sh MANIFEST.tsv DATA_ROOT [SSAST.pth]
#
# MANIFEST.tsv: pretraining audio (`maebench data manifest DIR -o MANIFEST.tsv`); DATA_ROOT/<task> holds each
# evaluation dataset in its official layout (as20k esc50 ks2 ks1 sid er; check one with `maebench data check`).
# Environment: RECIPE (default mae_ast_patch_base_paper), GPUS (default: all visible), RUN (run directory),
# PROBES (default "linear finetune"), SEEDS (default 1), OUT (default runs/paper). Re-running resumes the
# pretraining where it stopped; finished evaluations are kept (compare only runs what is missing).
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,11p' "$0"; exit 2
fi
MANIFEST=$1 DATA=$2 SSAST=${3:-}
RECIPE=${RECIPE:-mae_ast_patch_base_paper}
GPUS=${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
OUT=${OUT:-runs/paper}
RUN=${RUN:-$OUT/pretrain/$RECIPE}
PROBES=${PROBES:-linear finetune}
SEEDS=${SEEDS:-1}
TASKS="as20k esc50 ks2 ks1 sid er"

if [ "${GPUS:-0}" -gt 1 ]; then
  torchrun --standalone --nproc_per_node="$GPUS" -m maebench pretrain --recipe "$RECIPE" --data "$MANIFEST" --run-dir "$RUN"
else
  maebench pretrain --recipe "$RECIPE" --data "$MANIFEST" --run-dir "$RUN"
fi

upstreams=(--upstream "$RUN")
[ -n "$SSAST" ] && upstreams+=(--upstream "$SSAST")
task_args=()
for task in $TASKS; do task_args+=(--task "$task"); done
for probe in $PROBES; do
  # compare runs every missing (upstream, task) evaluation with this probe, then tabulates it against the paper
  # (its evaluations live in $OUT/compare-$probe/evals, so a re-run finds them and skips them)
  mkdir -p "$OUT/compare-$probe"
  maebench compare "$OUT/compare-$probe" "${upstreams[@]}" "${task_args[@]}" --probe "$probe" --data "$DATA" \
    --seeds "$SEEDS" --out "$OUT/compare-$probe"
done
echo "tables and charts: $OUT/compare-*/compare.{md,csv,png}"
