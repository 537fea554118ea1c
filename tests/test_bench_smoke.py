"""Every benchmark script runs in --quick mode and writes a JSON with machine info and figures.

Quick runs write into a temporary folder, never over bench/results (the full runs' figures).
The full runs are `make bench`; these only prove the scripts work end to end.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["bench_memory_model", "bench_surgery", "bench_adherence", "bench_serene", "bench_neq",
           "bench_dynhp", "bench_overhead", "bench_pipeline", "bench_scale"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_quick_mode_writes_json(name, tmp_path):
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert "machine" in data and "torch" in json.dumps(data["machine"])


def test_bench_report_renders_every_known_result(tmp_path):
    from fedprune.bench_report import RENDERERS, headline_rows, load_results, table, update_readme

    results = load_results(ROOT / "bench" / "results")
    rows = headline_rows(results)
    assert all("could not read" not in r[0] for r in rows), rows
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:start -->\nold\n<!-- bench:end -->\nrest\n")
    assert update_readme(readme, rows)
    text = readme.read_text()
    assert "old" not in text and table(rows) in text and text.endswith("rest\n")
    assert set(results) <= set(RENDERERS) | {"scale"}
