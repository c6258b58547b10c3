#!/usr/bin/env bash
# Every claim of the paper (Fudala et al., arXiv 2502.06355) measured on the built-in
# data, with a verdict by the rules in mpsl_flwr/tools/paper_claims.py: writes
# paper-claims.md, claims.json and the plots to $OUT (default docs/results/paper-claims).
#
# Runs at the default run's settings, where the built-in V+T task is learned (README,
# "Built-in tasks"); a smaller RUN_CONFIG finishes sooner but leaves the classification
# claims at chance ("not measurable here"). Time on 2 CPU cores, measured: claim 1 at
# N = 10 with one seed (an MPSL and a FedAvg run) and claims 3-5 took 11 minutes in all
# (claim 5's traffic probes, tiny..huge, 4 of them; claim 3 seconds). Everything (claim
# 1 at N = 10 and 50, claims 2 and 6, 3 seeds: 33 runs) takes hours; `--only`, SEEDS
# and `--clients 10` choose a part. Claim keys (dataset, Dirichlet alpha,
# clients-per-node, batch size) are the paper's and win over RUN_CONFIG.
#
#   examples/paper_claims.sh                  # everything (hours)
#   SEEDS=0 examples/paper_claims.sh --only 1,3,4,5 --clients 10   # the README's table
#   examples/paper_claims.sh --only 3,5       # the claims that train nothing, seconds
#   SEEDS=0 examples/paper_claims.sh --only 1 # one seed of claim 1
#   examples/paper_claims.sh --pretrained outputs/pretrained/encoder.pt
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-docs/results/paper-claims}
SEEDS=${SEEDS:-0,1,2}
RUN_CONFIG="checkpoint-every=0 progress=false"
exec "$PY" -m mpsl_flwr.cli paper-claims \
  --seeds "$SEEDS" \
  --nodes 10 \
  --clients 10,50 \
  --batch-sizes 50,100,250,500 \
  --min-steps 2 \
  --run-config "$RUN_CONFIG" \
  --out "$OUT" "$@"
