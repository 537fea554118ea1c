"""Every benchmark script runs in --quick mode and writes a JSON with machine info and figures.

Quick runs write into a temporary folder, never over bench/results (the full runs' figures).
The full runs are `make bench`; these only prove the scripts work end to end.
"""

import json
import re
import subprocess
import sys

import pytest

from support import ROOT

sys.path.insert(0, str(ROOT / "bench"))
SCRIPTS = ["bench_memory_model", "bench_surgery", "bench_adherence", "bench_serene", "bench_neq",
           "bench_dynhp", "bench_overhead", "bench_pipeline", "bench_scale", "bench_rss", "bench_auto_cgroup", "bench_client_rounds"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_quick_mode_writes_json(name, tmp_path):
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert "machine" in data and "torch" in json.dumps(data["machine"])
    from sections import SECTIONS

    SECTIONS[name.removeprefix("bench_")](data, tmp_path / "figures")  # the quick JSON renders too


@pytest.mark.slow
def test_rss_merge_measures_only_missing_points(tmp_path):
    out = tmp_path / "rss.json"
    run = [sys.executable, str(ROOT / "bench" / "bench_rss.py"), "--quick", "--out", str(out)]
    assert subprocess.run(run, cwd=ROOT, capture_output=True, timeout=600).returncode == 0
    first = json.loads(out.read_text())["points"]
    proc = subprocess.run(run + ["--merge", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.count('"model"') == 0  # nothing measured again
    assert json.loads(out.read_text())["points"] == first


def test_bench_report_renders_every_known_result(tmp_path):
    from results_page import RENDERERS, headline_rows, load_results, table, update_readme

    results = load_results(ROOT / "bench" / "results")
    rows = headline_rows(results)
    assert all("could not read" not in r[0] for r in rows), rows
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:start -->\nold\n<!-- bench:end -->\nrest\n")
    assert update_readme(readme, rows)
    text = readme.read_text()
    assert "old" not in text and table(rows) in text and text.endswith("rest\n")
    assert set(results) <= set(RENDERERS) | {"scale"}


def test_results_page_has_a_section_table_and_figure_per_benchmark(tmp_path):
    from results_page import write_results_md
    from sections import SECTIONS

    out = tmp_path / "RESULTS.md"
    write_results_md(ROOT / "bench" / "results", out)
    page = out.read_text()
    assert "could not be rendered" not in page
    for name in SECTIONS:
        if (ROOT / "bench" / "results" / f"{name}.json").exists():
            section = page.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
            assert "| --- |" in section, name
    for link in re.findall(r"\]\((figures/[^)]+)\)", page):
        assert (tmp_path / link).stat().st_size > 1000, link
    from sections import SERENE_PAPER

    paper_row = ("| SeReNe compression | LeNet-5 / MNIST (non-zero params) | "
                 f"{SERENE_PAPER['compression']}x | LeNet-5 / Fashion-MNIST (physically removed) | ")
    assert "## Methods beside the papers" in page and paper_row in page


def test_serene_table_row_is_the_json(tmp_path):
    from sections import serene_section

    arm = {"layer_remaining_pct": [50.0, 5.0, 0.5, 20.0], "layer_remaining_pct_std": [1.0, 0.5, 0.05, 2.0],
           "layer_neurons": [5, 6, 7, 10], "compression_structural": 40.0, "compression_structural_std": 4.0,
           "onnx_bytes": 12000.0, "onnx_bytes_std": 1000.0, "test_accuracy": 0.89, "test_accuracy_std": 0.01}
    data = {"epochs": 2, "seeds": [0, 1, 2], "arms": {"SeReNe": arm},
            "table": [{"layer": n} for n in ("conv1", "conv2", "fc1", "fc2")], "accuracy_loss_points": 1.0}
    text = serene_section(data, tmp_path)
    row = next(line for line in text.splitlines() if line.startswith("| SeReNe (ours) |"))
    assert "| 50.00 ± 1.00% | 5.00 ± 0.50% | 0.50 ± 0.05% | 20.00 ± 2.00% | [5]-[6]-[7]-[10] |" in row
    assert "40.0" in row and "89.00" in row and "12 " in row
    assert "| SeReNe (paper, non-zero) | MNIST | 33.75% |" in text



def test_physical_compression_of_neuron_counts_is_the_parameter_ratio():
    from bench_serene import physical_compression_at

    assert physical_compression_at("lenet5", [20, 50, 500]) == 1.0
    # LeNet-5 (5x5 convs, 28x28 input): conv1 25*n1+n1, conv2 25*n1*n2+n2, fc1 16*n2*n3+n3, fc2 10*n3+10
    def params(n1, n2, n3):
        return 26 * n1 + (25 * n1 + 1) * n2 + (16 * n2 + 1) * n3 + 10 * n3 + 10
    assert physical_compression_at("lenet5", [11, 26, 113]) == pytest.approx(params(20, 50, 500) / params(11, 26, 113))
    with pytest.raises(ValueError, match="3 prunable layers"):
        physical_compression_at("lenet5", [11, 26])


def test_results_page_script_writes_the_page_and_the_readme_table(tmp_path, capsys):
    from results_page import main

    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True)
    (results / "scale.json").write_text(json.dumps({"benchmark": "scale", "peak_host_memory_bytes": 3 * 2**30,
                                                    "fits": True, "seconds_per_round": 4.25}))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:start -->\nold\n<!-- bench:end -->\nend\n")
    page = tmp_path / "bench" / "RESULTS.md"
    assert main(["--results", str(results), "--out", str(page), "--readme", str(readme)]) == 0
    assert "README headline table updated" in capsys.readouterr().out
    text = page.read_text()
    assert "| scale: 100 clients (10 per round), peak host memory | 3.00 GiB | fits 24 GiB | yes |" in text
    assert "| scale: seconds per round | 4.2 |" in text or "| scale: seconds per round | 4.3 |" in text
    assert "old" not in readme.read_text() and "3.00 GiB" in readme.read_text()
    readme.write_text("intro\n<!-- bench:start -->\nold\n<!-- bench:end -->\nend\n")
    assert main(["--results", str(results), "--out", str(page), "--readme", str(readme), "--no-readme"]) == 0
    assert "old" in readme.read_text()
