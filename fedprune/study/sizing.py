"""How long a sweep will take: its runs' rounds x measured seconds per round, plus start-up per run.

The seconds per round and per start-up come from a pilot's report (``comparison.csv``:
``round_seconds_mean``; ``wall_seconds_mean`` minus the rounds gives the start-up and final
simplification). Runs already finished in the sweep folder are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedprune.study.sweep import expand, load_sweep, run_status


@dataclass(frozen=True)
class SweepSize:
    """A sweep's remaining work: runs, rounds over those runs, and the estimated seconds."""

    runs: int
    rounds: int
    seconds: float

    @property
    def hours(self) -> float:
        """``seconds`` in hours."""
        return self.seconds / 3600.0


def sweep_size(sweep_file: str | Path, round_seconds: float, startup_seconds: float,
               sweep_dir: str | Path | None = None) -> SweepSize:
    """The runs of ``sweep_file`` not yet done in ``sweep_dir`` (default: none done), their rounds,
    and ``rounds x round_seconds + runs x startup_seconds``. ``ValueError`` for negative seconds."""
    if round_seconds < 0 or startup_seconds < 0:
        raise ValueError(f"round_seconds={round_seconds}, startup_seconds={startup_seconds}: must be >= 0")
    plans = expand(load_sweep(sweep_file))
    if sweep_dir is not None:
        plans = [p for p in plans if run_status(Path(sweep_dir) / "runs" / p.id) != "done"]
    rounds = sum(p.config.run.num_rounds for p in plans)
    return SweepSize(len(plans), rounds, rounds * round_seconds + len(plans) * startup_seconds)


def sizing_markdown(sweep_files, round_seconds: float, startup_seconds: float) -> str:
    """A Markdown table: per sweep file its runs, rounds and estimated hours, then the total."""
    lines = ["| sweep | runs | rounds | hours |", "| --- | ---: | ---: | ---: |"]
    total = SweepSize(0, 0, 0.0)
    for f in sweep_files:
        s = sweep_size(f, round_seconds, startup_seconds)
        total = SweepSize(total.runs + s.runs, total.rounds + s.rounds, total.seconds + s.seconds)
        lines.append(f"| `{Path(f).name}` | {s.runs} | {s.rounds} | {s.hours:.2f} |")
    lines.append(f"| total | {total.runs} | {total.rounds} | {total.hours:.2f} |")
    return "\n".join(lines) + (f"\n\nAt {round_seconds:.1f} s per round and {startup_seconds:.0f} s of start-up "
                               "and final export per run.\n")
