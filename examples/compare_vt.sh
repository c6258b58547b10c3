#!/usr/bin/env bash
# The paper-style comparison on the built-in V+T task: MPSL, FedAvg, FedCLIP and
# centralized at 10 clients, Dirichlet alpha 0.1, 3 seeds, on the default run's settings
# (4-block ViT-Ti, 3000 training samples, 6 epochs); about 40 minutes on 2 CPU cores
# (764 s per seed measured, README "Strategies side by side").
# Writes table.md, table.csv, curves.png.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/compare-vt}
exec "$PY" -m mpsl_flwr.cli compare \
  --strategies mpsl,fedavg,fedclip,lw-fedmml,prog-fedmml,centralized \
  --seeds 0,1,2 \
  --nodes 10 \
  --run-config "dataset='synthetic-vqa' dirichlet-alpha=0.1 checkpoint-every=0 progress=false" \
  --out "$OUT" "$@"
