#!/usr/bin/env bash
# The demo command: installs what is missing, runs the whole workflow on the built-in demo (profiles/demo,
# offline backends, this CPU), renders the report, and says where everything is. Extra arguments go to
# Snakemake (e.g. `bash scripts/demo.sh -n` for a dry run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/snakemake --profile profiles/demo "$@"
case " $* " in *" -n "*|*" --dry-run "*) exit 0 ;; esac
.venv/bin/snakemake --profile profiles/demo --report results/report.html >/dev/null 2>&1
cat <<MSG

Demo finished.
  report:   $(pwd)/results/report.html   (one page: every stage's figures, the model's grid and metrics)
  metrics:  $(pwd)/results/evaluate/metrics.json
  model:    $(pwd)/results/train/model   (relight with: .venv/bin/relightflow relight --model results/train/model ...)
  results:  $(pwd)/results/              (per-stage manifests, rejects and stats; logs in results/logs)
MSG
