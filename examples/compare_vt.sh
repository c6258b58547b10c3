#!/usr/bin/env bash
# The paper-style comparison on the built-in V+T task: MPSL, FedAvg, FedCLIP and
# centralized at 10 clients, Dirichlet alpha 0.1, 3 seeds. Sized to finish in well under
# 30 minutes on 2 CPU cores (a 4-block ViT-Ti and 1500 training samples); drop the
# overrides for the full default model. Writes table.md, table.csv, curves.png.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/compare-vt}
exec "$PY" -m mpsl_flwr.cli compare \
  --strategies mpsl,fedavg,fedclip,lw-fedmml,prog-fedmml,centralized \
  --seeds 0,1,2 \
  --nodes 10 \
  --run-config "dataset='synthetic-vqa' dirichlet-alpha=0.1 encoder-depth=4 synthetic-train-size=1500 synthetic-test-size=400 epochs=5 progress=false" \
  --out "$OUT" "$@"
