#!/usr/bin/env bash
# The test command: installs what is missing, lints, brings up the local Slurm test cluster (as root, when
# its packages are installed) and runs the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
VENV=${VENV:-.venv}
"$VENV/bin/ruff" check src tests workflow_scripts benchmarks
if command -v slurmctld >/dev/null && [ "$(id -u)" = 0 ]; then
  bash scripts/local-slurm.sh up --no-install
  export RELIGHTFLOW_REQUIRE_SLURM=1
fi
# Two workers (the machine's cores); a test file stays on one worker, so a file's shared fixture (the demo
# run, a workflow's upstream) is built once and the Slurm tests never run beside each other.
exec "$VENV/bin/pytest" -q -n "${RELIGHTFLOW_TEST_WORKERS:-2}" --dist loadfile "$@"
