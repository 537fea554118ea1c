"""MemoryReport: utilization, violations, serialisation."""

import json

from fedprune.memory import MemoryReport, run_with_oom_guard


def test_report_fills_and_serialises():
    r = MemoryReport(client_id=3, round=2, budget_bytes=1000)
    r.record_prediction(900, batch_size=32)
    for b in (32, 32, 16):
        r.record_batch(b)
    r.record_measurement(800, rss_bytes=5000, batch_size=32)
    r.record_measurement(950, batch_size=16)
    assert r.utilization == 0.95 and r.violations == [] and r.batch_sizes == [32, 16]
    r.record_measurement(1100, batch_size=16, step=7)
    assert r.measured_peak_bytes == 1100 and r.violations[0]["kind"] == "measured_over_budget"
    _, _, events = run_with_oom_guard(lambda b: (_ for _ in ()).throw(MemoryError()) if b > 4 else b, 8,
                                      release=None)
    r.record_oom(events)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["num_violations"] == 1 and d["num_oom_events"] == 1 and d["utilization"] == 1.1
    m = r.to_metrics()
    assert all(isinstance(v, (int, float)) for v in m.values())
    assert m["mem_batch_size_last"] == 16 and m["mem_fits"] == 1


def test_unknowns_and_does_not_fit():
    r = MemoryReport(budget_bytes=0)
    assert r.utilization is None
    r.record_prediction(10)
    r.mark_does_not_fit("min batch 8 needs 10 B")
    assert not r.fits and r.violations[0]["kind"] == "predicted_over_budget"
    assert r.to_metrics()["mem_measured_peak_bytes"] == -1 and r.to_metrics()["mem_fits"] == 0
