"""Studies of many runs: reading run folders, tables, figures and the report.

``fedprune report`` (``study/report.py``) tables (CSV, Markdown) and figures (PNG) of finished runs.

Works on one results folder (``config.toml`` + ``metrics.jsonl`` + ``summary.json``), on a sweep
folder (``sweep.json`` + ``runs/<id>/``), or on any folder holding run folders below it. Writes into
the folder (or ``--out``):

- ``report.csv``   one row per run: its grid values, the ``summary.json`` figures *verbatim* (same
  numbers, full precision) and per-client aggregates computed from ``metrics.jsonl``;
- ``rounds.csv``   one row per run and round (accuracy, parameters, client means);
- ``report.md``    the fleet, a table averaged over seeds (mean +- std), the per-run table, figures;
- ``accuracy_vs_budget.png``, ``accuracy_vs_params.png``, ``clients_over_rounds.png``,
  ``flops_saved_over_rounds.png``.

Units: memory in MB (2**20 bytes), accuracy as a fraction in [0, 1] in the CSV and in % in figures.
A client's *budget level* is its reference budget (constant level, trace reference, schedule max)
from ``fedprune.fleet.client_profile``; a run's budget is the mean level over its clients.

Modules: ``runs`` (reading folders), ``numbers`` (per-client figures), ``tables`` (CSV rows),
``markdown`` (report.md), ``figures`` (PNGs), ``report`` (the entry point).
"""
