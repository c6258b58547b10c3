#!/usr/bin/env bash
# Every claim of the paper (Fudala et al., arXiv 2502.06355) measured on the built-in
# data, with a verdict by the rules in mpsl_flwr/tools/paper_claims.py: writes
# paper-claims.md, claims.json and the plots to $OUT (default docs/results/paper-claims).
#
# Sized for about 30 minutes on 2 CPU cores. Most of it is per-run start-up, measured at
# ~40-45 s for each flwr run simulation on the 2-core machine while it was also busy
# (training itself is a few seconds at this size): claim 1 is 2 client counts x 2
# strategies x 3 seeds = 12 runs, claim 2 is 3 x 3 = 9, claim 6 is 4 batch sizes x 3
# seeds = 12 (on max(synthetic-train-size, 500 x --min-steps) samples): 33 runs, ~25 min.
# Claims 3-5 train nothing: claim 3 takes seconds, claim 5's traffic probes (tiny..huge,
# 10 clients) took 4 min; `--sizes tiny,base,huge` shortens it. Retune the sizes on the
# RUN_CONFIG line only; claim keys (dataset, Dirichlet alpha, clients-per-node, batch
# size) are the paper's and win over it.
#
#   examples/paper_claims.sh                  # everything
#   examples/paper_claims.sh --only 3,5       # the claims that train nothing, seconds
#   SEEDS=0 examples/paper_claims.sh --only 1 # one seed of claim 1
#   examples/paper_claims.sh --pretrained outputs/pretrained/encoder.pt
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-docs/results/paper-claims}
SEEDS=${SEEDS:-0,1,2}
RUN_CONFIG="encoder-depth=1 synthetic-train-size=600 synthetic-test-size=200 epochs=2 checkpoint-every=0 progress=false"
exec "$PY" -m mpsl_flwr.cli paper-claims \
  --seeds "$SEEDS" \
  --nodes 10 \
  --clients 10,50 \
  --batch-sizes 50,100,250,500 \
  --min-steps 2 \
  --run-config "$RUN_CONFIG" \
  --out "$OUT" "$@"
