#!/usr/bin/env bash
# Run (or resume) the converged study: every sweep in order of priority, archiving the finished runs
# into docs/study/sweeps after each sweep (scripts/archive_study.sh), then the report. Each sweep
# skips its finished runs, so running this again after a kill goes on where it stopped.
#   bash scripts/run_study.sh            # all parts
#   bash scripts/run_study.sh upper iid_tight_quorum   # only these parts, in this order
set -uo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-.venv/bin}"
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(upper iid_tight_quorum iid_tight upper_dirichlet dirichlet_quorum dirichlet
                                   iid_middle generous dirichlet_quorum_warmup dirichlet_quorum_warmup_85
                                   dirichlet_consensus_warmup iid_tight_consensus)
status=0
for part in "${parts[@]}"; do
  file="sim_configs/study_converged_${part}_sweep.toml"
  [ -f "$file" ] || { echo "run_study: no sweep file $file" >&2; exit 2; }
  echo "run_study: $(date -u +%FT%TZ) $file"
  "$BIN/fedprune" sweep "$file" --quiet || status=$?
  bash scripts/archive_study.sh
done
"$BIN/fedprune" report results/sweeps/study-converged --out docs/study/converged --readme README.md || status=$?
exit "$status"
