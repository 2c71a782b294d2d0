#!/usr/bin/env bash
# The SASRec-CE teacher catalogue (issues 25 and 26) on one GPU host, many runs at once, then its runs packed
# for the trip back. Run from the repository root, with the data folder holding Beauty/Toys_and_Games (and
# their stored negatives, *_sample.txt, so the sampled metrics use the committed negatives):
#
#   bash training/gpu_catalogue.sh OUT [DATA_DIR] [TIME_BUDGET_S] [DATASETS...]
#
# Every row keeps the cpu preset (the recipe of the committed CPU runs), on CUDA, with `run_all.py --workers`
# (one process per run; these models are small, so one run leaves the GPU and the host's cores mostly idle).
# Rows, per dataset, 3 seeds unless said:
#   leaves: hgn_ce, hgn (BPR), gru4rec alone; sasrec_ce_prefix (the plain teachers P); the task teachers T
#           (teacher_sas_temporal@0, persona@1, global@2, one seed each);
#   ensembles of P and of T (1 run each);
#   students: hgn_ce--T (SSI-HGN-CE) and hgn_ce--P (plain KD, the ablation's control), hgn--T (the paper's
#             SSI-HGN), gru4rec--T (SSI-GRU4Rec), gru4rec--P, hgn_ce--T--mean; Figure 3 (hgn_ce from each task
#             teacher alone, seed 42); sasrec_ce_prefix--P--proj (seed 42: can a SASRec student pass its teachers?)
# OUT receives summary.txt, train.txt and what `python -m training.pack_runs` packs: runs-meta.tar.gz (every
# finished run's metrics, history and configs, the workers' logs) and weights-K.tar (interrupted runs'
# checkpoints, then teachers' weights, then the students' by validation full NDCG@10; 15 MiB each, 60 in all).
# RUNS (default /tmp/gpu-catalogue-runs) may hold runs unpacked from an earlier trip: finished ones are skipped.
set -uo pipefail
OUT=${1:?usage: bash training/gpu_catalogue.sh OUT [DATA_DIR] [TIME_BUDGET_S] [DATASETS...]}
DATA=${2:-data}
BUDGET=${3:-450}
shift $(( $# < 3 ? $# : 3 ))
DATASETS=("${@:-beauty toys}")
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu PRESET=smoke: a dry run of this script on a machine without a GPU
PRESET=${PRESET:-cpu}
RUNS=${RUNS:-/tmp/gpu-catalogue-runs}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p "$OUT" "$RUNS"

T=teacher_sas_temporal@0+teacher_sas_persona@1+teacher_sas_global@2
P=sasrec_ce_prefix@0+sasrec_ce_prefix@1+sasrec_ce_prefix@2
ALL_SEEDS=(hgn_ce hgn gru4rec sasrec_ce_prefix "ensemble--$P" "ensemble--$T" "hgn_ce--$T" "hgn_ce--$P" "hgn--$T"
           "gru4rec--$T" "gru4rec--$P" "hgn_ce--$T--mean")
ONE_SEED=("hgn_ce--teacher_sas_temporal@0" "hgn_ce--teacher_sas_persona@1" "hgn_ce--teacher_sas_global@2"
          "sasrec_ce_prefix--$P--proj")
WORKERS=${WORKERS:-$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$OUT/summary.txt"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/summary.txt"
# two invocations: the 3-seed rows within the budget, then the single-seed rows (--seeds 42 alone: name@k is
# still 42 + k, so they reuse the same teachers) on what is left of it
start=$(date +%s)
train() {  # train SEEDS BUDGET ROWS...
    local seeds=$1 budget=$2; shift 2
    # shellcheck disable=SC2086
    "$PYTHON" training/run_all.py --preset "$PRESET" --device "$DEVICE" --data-dir "$DATA" --datasets ${DATASETS[*]} \
        --seeds $seeds --models "$@" --out "$RUNS" --no-export --train-new-teachers \
        --workers "$WORKERS" --time-budget "$budget" 2>&1 | tee -a "$OUT/train.txt"
}
train "42 43 44" "$BUDGET" "${ALL_SEEDS[@]}"
left=$(( BUDGET - ($(date +%s) - start) ))
[ "$left" -gt 30 ] && train 42 "$left" "${ONE_SEED[@]}"
"$PYTHON" -m training.pack_runs "$RUNS" "$OUT" 2>&1 | tee -a "$OUT/summary.txt"
