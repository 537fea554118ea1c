#!/usr/bin/env bash
# Keep the converged study's runs in the repository: copies results/sweeps/study-converged (or $1)
# into docs/study/sweeps (or $2) with each finished run's config.toml, metrics.jsonl and summary.json
# and each sweep's manifest -- what `fedprune report` reads -- but no model files or checkpoints.
# Copy the folder back (`cp -r docs/study/sweeps/. results/sweeps/study-converged/`) and the sweeps skip the
# finished runs.
set -euo pipefail
src="${1:-results/sweeps/study-converged}"
dst="${2:-docs/study/sweeps}"
[ -d "$src" ] || { echo "archive_study: no study folder at $src" >&2; exit 2; }
for sweep in "$src"/*/; do
  name="$(basename "$sweep")"
  [ -f "$sweep/sweep.json" ] || continue
  mkdir -p "$dst/$name/runs"
  cp "$sweep"/sweep.json "$sweep"/sweep.toml "$sweep"/base.toml "$dst/$name/"
  for run in "$sweep"/runs/*/; do
    [ -f "$run/summary.json" ] || continue  # unfinished: the sweep restarts it
    mkdir -p "$dst/$name/runs/$(basename "$run")"
    cp "$run"/config.toml "$run"/metrics.jsonl "$run"/summary.json "$dst/$name/runs/$(basename "$run")/"
    # the run's folder on this machine: a copy is its own place (sweeps compare configs without it)
    sed -i 's|^out-dir = .*|out-dir = ""|' "$dst/$name/runs/$(basename "$run")/config.toml"
  done
done
echo "archive_study: $(find "$dst" -name summary.json | wc -l) finished runs in $dst"
