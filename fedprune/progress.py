"""The console's view of a running federation: a progress bar redrawn from ``metrics.jsonl``."""

from __future__ import annotations

import sys
from pathlib import Path

from fedprune.results import read_metrics


def round_progress(run_dir: Path, total: int):
    """A poll function that redraws a rich progress bar from ``metrics.jsonl``."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    progress = Progress(TextColumn("[bold]round {task.completed}/{task.total}"), BarColumn(),
                        TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                        transient=False, disable=not console.is_terminal)
    task = progress.add_task("starting Flower + Ray ...", total=total)
    seen = {"n": 0}

    def poll() -> None:
        rows = read_metrics(run_dir)
        if len(rows) != seen["n"]:
            seen["n"] = len(rows)
            r = rows[-1]
            desc = (f"acc {r.get('accuracy', 0):.4f}  params {r.get('params_alive', 0):,}  "
                    f"clients {r.get('aggregated', 0)}/{r.get('sampled', 0)}  "
                    f"failures {len(r.get('failures', {}))}")
            progress.update(task, completed=len(rows), description=desc)
            if not console.is_terminal:
                print(f"round {len(rows)}/{total}: {desc}", file=sys.stderr, flush=True)

    return progress, poll


