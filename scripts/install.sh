#!/usr/bin/env bash
# Installs what is missing, fast when nothing is: a .venv with torch (from this machine's local wheels), the
# ML stack, Snakemake and the relightflow package (editable); as root on Debian, the packages of the local
# Slurm test cluster and the report check. Called by scripts/demo.sh and scripts/test.sh; safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/pip --disable-pip-version-check -q"
# The Python part is redone only when what it installs from changed (pyproject.toml or this script).
stamp="$VENV/.relightflow-installed"
want=$(cat pyproject.toml "$0" | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # torch/torchvision first and pinned: pip takes them from the local disk (cap in /etc/xdg/pip).
  $PIP install "torch==2.14.1" "torchvision==0.29.1"
  $PIP install -e ".[workflow,ml,dev]"
  # sam2 is sdist-only and builds against the torch above; no CUDA extension needed (hole filling only).
  "$VENV/bin/python" -c "import sam2" 2>/dev/null || \
    SAM2_BUILD_CUDA=0 $PIP install --no-build-isolation --no-deps "sam2==1.1.0"
  echo "$want" > "$stamp"
fi
# System packages: local single-node Slurm (cluster tests), chromium (report check).
if [ "${RELIGHTFLOW_SKIP_APT:-0}" != 1 ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  need=()
  for p in slurmctld slurmd slurm-client munge chromium; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
fi
