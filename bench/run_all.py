"""Run every benchmark in bench/ (full mode), then turn bench/results into bench/RESULTS.md.

`make bench` calls this. Each script writes bench/results/<name>.json; `bench/results_page.py`
then writes bench/RESULTS.md and refreshes the README's headline table (only `make bench` does). A failing script is reported
and the others still run. Pass script names to run only some (e.g. `python bench/run_all.py neq`).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCRIPTS = ["bench_memory_model", "bench_surgery", "bench_adherence", "bench_serene", "bench_neq",
           "bench_dynhp", "bench_overhead", "bench_pipeline", "bench_scale", "bench_rss", "bench_auto_cgroup", "bench_client_rounds"]


def main(argv: list[str]) -> int:
    chosen = [s if s.startswith("bench_") else f"bench_{s}" for s in argv] or SCRIPTS
    failed = []
    for name in chosen:
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        code = subprocess.call([sys.executable, str(HERE / f"{name}.py")], cwd=ROOT)
        print(f"== {name}: exit {code} in {time.perf_counter() - t0:.0f} s", flush=True)
        if code:
            failed.append(name)
    code = subprocess.call([sys.executable, str(HERE / "results_page.py")], cwd=ROOT)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed or code else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
