"""``fedprune sweep SWEEP_FILE``: a grid of simulations (budgets x methods x seeds x any config key).

Sweep file (TOML)::

    [sweep]
    name = "study-reference"          # default: the file's stem
    base = "study_reference.toml"     # experiment config, relative to this file
    parallel = 1                      # runs at a time (capped at the machine's cores)
    out-dir = ""                      # default: results/sweeps/<name>

    [sweep.set]                       # dotted config keys applied to every run (optional)
    "run.num-rounds" = 3

    [sweep.grid]                      # dotted config keys -> list of values; the cartesian product
    "run.seed" = [0, 1]               # is run, the last key varying fastest
    "fleet.budget-scale" = [0.004, 0.008, 0.016]
    "methods.enabled" = ["none", "dynhp", "serene", "neq", "serene+neq+dynhp"]

Sweep folder::

    sweep.toml   the sweep file as given (base rewritten to "base.toml", out-dir to "")
    base.toml    the resolved base experiment config
    sweep.json   the manifest: every run, its overrides, status, attempts, timings
    runs/<id>/   one ordinary results folder per run (``config.toml``, ``metrics.jsonl``, ``summary.json``)

Each run is launched exactly like ``fedprune simulate`` (``fedprune.run_folder.prepare_run_dir`` +
``fedprune.launch.run_flower_simulation``). **Resuming**: running the same command again (or
``fedprune sweep SWEEP_DIR``) skips every run with a ``summary.json``; an unfinished run with a
``checkpoint.npz`` continues from its last round (the server app resumes from the checkpoint); an
unfinished run without one restarts clean. Before (re)starting a run, processes still alive from a
killed sweep for that run (found by their ``FLWR_HOME``) are stopped. A run folder whose
``config.toml`` differs from what the sweep file now plans is an error (the sweep file changed), so
a finished run is never silently reused for different settings. Finished runs of an earlier plan
of the same sweep (a copy of the sweep file with fewer values, e.g. one seed at a time) stay in the
manifest (``"outside_plan": true``), so a report still sees them. A non-empty ``--out`` that is not
a folder of the same sweep (by name) is refused before anything is written. A file lock stops two
sweeps from working in one folder at once. A sweep in which some run trained no client in any round
(its model is the initial one) ends with exit code 1 and one line naming those runs.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import itertools
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
import tomllib
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fedprune.config import (ConfigError, ExperimentConfig, config_from_dict, dumps_toml, load_config,
                             to_dict)
from fedprune.results import CONFIG_FILE, SUMMARY_FILE, atomic_write_text, read_metrics, write_json
from fedprune.run_folder import prepare_run_dir

SWEEP_FILE, BASE_FILE, MANIFEST_FILE, LOCK_FILE, RUNS_DIR = (
    "sweep.toml", "base.toml", "sweep.json", ".sweep.lock", "runs")
CHECKPOINT_FILE = "checkpoint.npz"
SWEEP_KEYS = ("name", "base", "parallel", "out-dir", "set", "grid")

# runner(cfg, run_dir, on_poll) -> exit code; run_dir is prepared (config.toml written)
Runner = Callable[[ExperimentConfig, Path, Callable[[], None]], int]


class SweepError(ConfigError):
    """A sweep file or sweep folder is unusable; the message is one line."""


class SweepInterrupted(Exception):
    """Raised inside a run's poll callback to stop it when the sweep is interrupted."""


# ------------------------------------------------------------------------------ the plan


@dataclass
class SweepSpec:
    """A parsed sweep file."""

    name: str
    base: dict[str, Any]  # nested TOML-layout config dict of the base experiment
    fixed: dict[str, Any] = field(default_factory=dict)  # dotted key -> value, every run
    grid: dict[str, list[Any]] = field(default_factory=dict)  # dotted key -> values
    parallel: int = 1
    out_dir: str = ""
    source_text: str = ""  # the sweep file's text (copied into the sweep folder)


@dataclass
class RunPlan:
    """One point of the grid: its id, its grid values and its full, validated config."""

    id: str
    overrides: dict[str, Any]
    config: ExperimentConfig


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SweepError(f"sweep key {key!r}: {part!r} is not a section")
        node = child
    node[leaf] = value


def load_sweep(path: str | Path, base_override: str | Path | None = None) -> SweepSpec:
    """Read and check a sweep file (every grid point is validated as a config later, by ``expand``)."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SweepError(f"{path}: not valid TOML ({err})") from None
    sw = data.get("sweep")
    if not isinstance(sw, dict):
        raise SweepError(f"{path}: no [sweep] table (is this an experiment config? use `fedprune simulate`)")
    extra = sorted(set(data) - {"sweep"})
    if extra:
        raise SweepError(f"{path}: unexpected top-level table {extra[0]!r}; a sweep file has only [sweep]")
    unknown = sorted(set(sw) - set(SWEEP_KEYS))
    if unknown:
        raise SweepError(f"sweep.{unknown[0]}: unknown key; expected one of {', '.join(SWEEP_KEYS)}")
    base_ref = base_override or sw.get("base")
    if not base_ref or not isinstance(base_ref, (str, Path)):
        raise SweepError("sweep.base: missing; name the experiment config the grid starts from")
    base_path = Path(base_ref) if base_override else (path.parent / str(base_ref))
    if not base_path.is_file():
        raise SweepError(f"sweep.base = {str(base_ref)!r}: file {str(base_path)!r} not found")
    try:
        base_cfg = load_config(base_path)
    except ConfigError as err:
        raise SweepError(f"sweep.base ({base_path}): {err}") from None
    fixed = sw.get("set", {})
    grid = sw.get("grid", {})
    if not isinstance(fixed, dict) or not isinstance(grid, dict):
        raise SweepError("sweep.set and sweep.grid must be tables of dotted config keys")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"sweep.grid.{key!r} = {values!r}: expected a non-empty list of values")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise SweepError(f"sweep.grid.{key!r} = {values!r}: values repeat")
    for key, value in fixed.items():
        if isinstance(value, dict):
            raise SweepError(f"sweep.set.{key!r}: use dotted keys (\"section.key\" = value)")
    parallel = sw.get("parallel", 1)
    if not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 1:
        raise SweepError(f"sweep.parallel = {parallel!r}: must be an integer >= 1")
    name = sw.get("name", path.stem)
    if not isinstance(name, str) or not name or "/" in name:
        raise SweepError(f"sweep.name = {name!r}: expected a non-empty name without '/'")
    out_dir = sw.get("out-dir", "")
    if not isinstance(out_dir, str):
        raise SweepError(f"sweep.out-dir = {out_dir!r}: expected a string")
    base = to_dict(base_cfg)
    base["run"]["out-dir"] = ""
    return SweepSpec(name=name, base=base, fixed=dict(fixed), grid={k: list(v) for k, v in grid.items()},
                     parallel=parallel, out_dir=out_dir, source_text=text)


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+\-]+", "_", text).strip("_") or "x"


def run_ids(grid_keys: list[str], points: list[dict[str, Any]]) -> list[str]:
    """Readable, unique, filesystem-safe ids (``seed=0_budget-scale=0.5_enabled=dynhp``)."""
    leaves = [k.split(".")[-1] for k in grid_keys]
    labels = [k.replace(".", "-") if leaves.count(k.split(".")[-1]) > 1 else k.split(".")[-1]
              for k in grid_keys]
    ids: list[str] = []
    for point in points:
        parts = [f"{_safe(lab)}={_safe(_fmt_value(point[k]))}" for lab, k in zip(labels, grid_keys)]
        rid = "_".join(parts) or "run"
        if len(rid) > 120:
            import hashlib

            rid = rid[:100] + "-" + hashlib.sha1(rid.encode()).hexdigest()[:10]
        ids.append(rid)
    seen: dict[str, int] = {}
    out = []
    for rid in ids:
        n = seen.get(rid, 0)
        seen[rid] = n + 1
        out.append(rid if n == 0 else f"{rid}-{n}")
    return out


def expand(spec: SweepSpec) -> list[RunPlan]:
    """Every grid point as a validated config; ``SweepError`` naming the point and key if one is bad."""
    keys = list(spec.grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(spec.grid[k] for k in keys))]
    ids = run_ids(keys, points)
    plans = []
    for rid, point in zip(ids, points):
        tree = json.loads(json.dumps(spec.base))
        for k, v in {**spec.fixed, **point}.items():
            _set_dotted(tree, k, v)
        _set_dotted(tree, "run.name", rid)
        try:
            cfg = config_from_dict(tree)
        except ConfigError as err:
            where = "sweep.set" if not point else f"sweep run {rid}"
            raise SweepError(f"{where}: {err}") from None
        plans.append(RunPlan(rid, point, cfg))
    return plans


# ------------------------------------------------------------------------------ run folders


def _comparable(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    d = json.loads(json.dumps(cfg_dict))
    d.get("run", {}).pop("out-dir", None)
    return d


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            diff = _first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
            if diff:
                return diff
        return None
    return None if a == b else f"{prefix.rstrip('.')} (folder {a!r}, plan {b!r})"


def run_status(run_dir: Path) -> str:
    """``done`` (has summary.json), ``resumable`` (config + checkpoint), ``partial`` or ``new``."""
    if (run_dir / SUMMARY_FILE).is_file():
        return "done"
    if (run_dir / CONFIG_FILE).is_file() and (run_dir / CHECKPOINT_FILE).is_file():
        return "resumable"
    if run_dir.exists():
        return "partial"
    return "new"


def check_run_folder(plan: RunPlan, run_dir: Path) -> None:
    """``SweepError`` if the folder holds a finished or resumable run of other settings than the plan.

    An unfinished run without a checkpoint is restarted clean anyway, so it takes the new settings.
    """
    cfg_file = run_dir / CONFIG_FILE
    if run_status(run_dir) not in ("done", "resumable"):
        return
    try:
        stored = to_dict(load_config(cfg_file))
    except ConfigError as err:
        if run_status(run_dir) == "done":
            raise SweepError(f"{cfg_file}: unreadable config of a finished run ({err})") from None
        return  # an unfinished, broken folder restarts clean
    diff = _first_difference(_comparable(stored), _comparable(to_dict(plan.config)))
    if diff:
        raise SweepError(f"{run_dir}: holds a run with other settings than the sweep now plans: {diff}; "
                         f"the sweep file (or a default) changed - use another --out, or delete that run folder")


def check_sweep_folder(spec: SweepSpec, sweep_dir: Path) -> None:
    """``SweepError`` unless ``sweep_dir`` is absent, empty, or a folder of this same sweep.

    A sweep folder holds only the sweep's own files (or at least its manifest or sweep file); its
    manifest must name this sweep. Its runs are then checked one by one (:func:`check_run_folder`),
    so a grid may grow in place but a finished run is never reused for other settings.
    """
    if not sweep_dir.is_dir():
        if sweep_dir.exists():
            raise SweepError(f"{sweep_dir}: is a file, not a folder; pass another --out")
        return
    names = {p.name for p in sweep_dir.iterdir()} - {LOCK_FILE}
    own = {SWEEP_FILE, BASE_FILE, MANIFEST_FILE, RUNS_DIR}
    if names and not (names <= own or MANIFEST_FILE in names or SWEEP_FILE in names):
        raise SweepError(f"{sweep_dir}: not empty and not a sweep folder; pass another --out")
    manifest_path = sweep_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        return
    try:
        name = json.loads(manifest_path.read_text()).get("name")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        raise SweepError(f"{manifest_path}: unreadable sweep manifest; pass another --out") from None
    if name != spec.name:
        raise SweepError(f"{sweep_dir}: holds another sweep ({name!r}, not {spec.name!r}); pass another --out")


def trained_nothing(run_dir: Path) -> bool:
    """True when a finished run's global model was never updated (no client trained in any round)."""
    try:
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return False
    if isinstance(summary.get("rounds_aggregated"), int):
        return summary["rounds_aggregated"] == 0
    rows = read_metrics(run_dir)
    return bool(rows) and all("aggregated" in r for r in rows) and not any(r["aggregated"] for r in rows)


def reap_orphans(run_dirs: list[Path]) -> list[int]:
    """Stop processes left running by a killed sweep for these runs (matched by their FLWR_HOME)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        return []
    homes = {str((d / ".flwr").resolve()) for d in run_dirs}
    me = os.getpid()
    victims = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            if proc.environ().get("FLWR_HOME") in homes:
                victims.append(proc)
        except (psutil.Error, OSError):
            continue
    for proc in victims:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(victims, timeout=5)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    return [p.pid for p in victims]


# ------------------------------------------------------------------------------ runners


def flower_runner(cfg: ExperimentConfig, run_dir: Path, on_poll: Callable[[], None]) -> int:
    """Run one prepared results folder with Flower, exactly as ``fedprune simulate`` does."""
    from fedprune.launch import SimulationSpec, run_flower_simulation

    return run_flower_simulation(SimulationSpec.for_run(cfg, run_dir), on_poll=on_poll)


def load_runner(ref: str) -> Runner:
    """``module:function`` -> the function (used by tests to inject a fake runner)."""
    mod, _, fn = ref.partition(":")
    return getattr(importlib.import_module(mod), fn)


# ------------------------------------------------------------------------------ progress


class _Display:
    """One rich progress display for the whole sweep: an overall bar and one line per active run."""

    def __init__(self, total: int, done: int, name: str, quiet: bool = False):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.console = Console(stderr=True)
        self.live = self.console.is_terminal and not quiet
        self.quiet = quiet
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
                                 disable=not self.live)
        self.overall = self.progress.add_task(f"[bold]sweep {name}", total=total, completed=done)
        self.tasks: dict[str, Any] = {}
        self.lock = threading.Lock()

    def __enter__(self) -> "_Display":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def log(self, text: str) -> None:
        if self.quiet:
            return
        if self.live:
            self.progress.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def start_run(self, rid: str, rounds: int) -> None:
        with self.lock:
            self.tasks[rid] = self.progress.add_task(f"  {rid}", total=rounds)

    def update_run(self, rid: str, rows: list[dict[str, Any]]) -> None:
        with self.lock:
            task = self.tasks.get(rid)
            if task is None or not rows:
                return
            r = rows[-1]
            self.progress.update(task, completed=len(rows),
                                 description=f"  {rid}  acc {r.get('accuracy', 0):.3f}")

    def end_run(self, rid: str) -> None:
        with self.lock:
            task = self.tasks.pop(rid, None)
            if task is not None:
                self.progress.remove_task(task)
            self.progress.advance(self.overall)


# ------------------------------------------------------------------------------ the sweep


@dataclass
class SweepResult:
    sweep_dir: Path
    done: list[str]
    failed: list[str]
    skipped: list[str]  # already finished before this invocation
    interrupted: bool = False


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


class Sweep:
    """A sweep folder: its plan, manifest and lock; ``run()`` executes what is not done yet."""

    def __init__(self, spec: SweepSpec, sweep_dir: Path, runner: Runner | None = None,
                 parallel: int | None = None, quiet: bool = False):
        self.spec = spec
        self.dir = sweep_dir.expanduser().resolve()
        self.runner = runner or flower_runner
        self.plans = expand(spec)
        cores = os.cpu_count() or 1
        self.parallel = max(1, min(parallel or spec.parallel, cores, len(self.plans)))
        self.quiet = quiet
        self.stop = threading.Event()
        self._mlock = threading.Lock()
        self.manifest: dict[str, Any] = {}

    # -------------------------------------------------------------- manifest

    def run_dir(self, rid: str) -> Path:
        return self.dir / RUNS_DIR / rid

    def _load_manifest(self) -> None:
        old: dict[str, Any] = {}
        path = self.dir / MANIFEST_FILE
        if path.is_file():
            try:
                old = json.loads(path.read_text())
            except json.JSONDecodeError:
                old = {}
        prev = {r["id"]: r for r in old.get("runs", []) if isinstance(r, dict) and "id" in r}
        runs = []
        for plan in self.plans:
            p = prev.get(plan.id, {})
            status = run_status(self.run_dir(plan.id))
            runs.append({"id": plan.id, "dir": f"{RUNS_DIR}/{plan.id}", "overrides": plan.overrides,
                         "status": "done" if status == "done" else
                         ("failed" if p.get("status") == "failed" else "pending"),
                         "attempts": int(p.get("attempts", 0)),
                         **{k: p[k] for k in ("exit_code", "started", "finished", "wall_seconds",
                                              "error", "resumed_from_round") if k in p}})
        planned = {plan.id for plan in self.plans}
        runs += [{**r, "status": "done", "outside_plan": True} for rid, r in prev.items()
                 if rid not in planned and run_status(self.run_dir(rid)) == "done"]
        self.manifest = {"name": self.spec.name, "created": old.get("created", _now()),
                         "updated": _now(), "grid": self.spec.grid, "set": self.spec.fixed,
                         "parallel": self.parallel, "total": len(self.plans), "runs": runs}
        self._save_manifest()

    def _save_manifest(self) -> None:
        with self._mlock:
            self.manifest["updated"] = _now()
            counts: dict[str, int] = {}
            for r in self.manifest["runs"]:
                counts[r["status"]] = counts.get(r["status"], 0) + 1
            self.manifest["counts"] = counts
            write_json(self.dir / MANIFEST_FILE, self.manifest)

    def _entry(self, rid: str) -> dict[str, Any]:
        return next(r for r in self.manifest["runs"] if r["id"] == rid)

    def _update(self, rid: str, **fields: Any) -> None:
        with self._mlock:
            entry = self._entry(rid)
            entry.update(fields)
            for k in [k for k, v in fields.items() if v is None]:
                entry.pop(k, None)
        self._save_manifest()

    # -------------------------------------------------------------- one run

    def _execute(self, plan: RunPlan, display: _Display) -> str:
        """Run (or resume) one planned run; returns its final status."""
        run_dir = self.run_dir(plan.id)
        status = run_status(run_dir)
        if status == "done":
            return "done"
        prepared = self._prepare(plan, run_dir, status, display)
        if prepared is None:
            return "failed"
        cfg, run_dir, resumed_from = prepared
        attempts = self._entry(plan.id)["attempts"] + 1
        self._update(plan.id, status="running", attempts=attempts, started=_now(), finished=None,
                     error=None, exit_code=None, resumed_from_round=resumed_from or None)
        display.start_run(plan.id, cfg.run.num_rounds)
        if resumed_from:
            display.log(f"{plan.id}: resuming after round {resumed_from}")
        t0 = time.perf_counter()
        code, error = self._launch(plan, cfg, run_dir, display)
        return self._finish(plan, run_dir, code, error, t0, display)

    def _prepare(self, plan: RunPlan, run_dir: Path, status: str,
                 display: _Display) -> tuple[ExperimentConfig, Path, int] | None:
        """The run's folder, ready to launch (resumed, or cleaned and new); None when it failed."""
        try:
            if status == "resumable":
                resumed_from = len(read_metrics(run_dir))
                cfg, run_dir = prepare_run_dir(plan.config, None, str(run_dir))
                return cfg, run_dir, resumed_from
            if run_dir.exists():
                shutil.rmtree(run_dir)
            cfg, run_dir = prepare_run_dir(plan.config, str(run_dir), None)
            return cfg, run_dir, 0
        except Exception as err:  # noqa: BLE001 - recorded; the other runs go on
            self._update(plan.id, status="failed", error=f"{type(err).__name__}: {err}")
            display.log(f"FAILED {plan.id}: could not prepare its folder: {err}")
            display.end_run(plan.id)
            return None

    def _launch(self, plan: RunPlan, cfg: ExperimentConfig, run_dir: Path,
                display: _Display) -> tuple[int | None, str | None]:
        """Run the runner with a poll that follows metrics.jsonl; (exit code, error or None)."""
        seen = {"mtime": 0.0}

        def on_poll() -> None:
            if self.stop.is_set():
                raise SweepInterrupted(plan.id)
            path = run_dir / "metrics.jsonl"
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                return
            if mtime != seen["mtime"]:
                seen["mtime"] = mtime
                display.update_run(plan.id, read_metrics(run_dir))

        try:
            return int(self.runner(cfg, run_dir, on_poll)), None
        except SweepInterrupted:
            return None, "interrupted"
        except Exception as err:  # noqa: BLE001 - one failed run must not end the sweep
            return None, f"{type(err).__name__}: {err}"
        finally:
            display.end_run(plan.id)

    def _finish(self, plan: RunPlan, run_dir: Path, code: int | None, error: str | None, t0: float,
                display: _Display) -> str:
        """Record how the run ended in the manifest and on the display; returns its status."""
        ok = (run_dir / SUMMARY_FILE).is_file()
        if ok:
            state = "done"
        elif error == "interrupted" or self.stop.is_set():
            state = "interrupted"
        else:
            state = "failed"
            error = error or f"exit code {code} without {SUMMARY_FILE}; see {run_dir / 'flwr.log'}"
        self._update(plan.id, status=state, exit_code=code, finished=_now(),
                     wall_seconds=round(time.perf_counter() - t0, 3), error=error if not ok else None)
        if ok:
            try:
                s = json.loads((run_dir / SUMMARY_FILE).read_text())
                errors = sum(1 for r in read_metrics(run_dir) for k, v in (r.get("failures") or {}).items()
                             if k != "round" and "does not fit" not in str(v))
                warn = f" - WARNING: {errors} client error(s), see metrics.jsonl failures" if errors else ""
                display.log(f"done {plan.id}: accuracy {s.get('final_accuracy', float('nan')):.4f}, "
                            f"{s.get('final_params', 0):,} params, {time.perf_counter() - t0:.0f} s{warn}")
            except (OSError, ValueError, TypeError):
                display.log(f"done {plan.id}")
        elif state == "failed":
            display.log(f"FAILED {plan.id}: {error}")
        return state

    # -------------------------------------------------------------- all runs

    def _write_files(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / RUNS_DIR).mkdir(exist_ok=True)
        text = re.sub(r'(?m)^(\s*base\s*=\s*).*$', rf'\1"{BASE_FILE}"', self.spec.source_text, count=1)
        # the folder is the sweep's place: its copy names no path of this machine and can move
        text = re.sub(r'(?m)^(\s*out-dir\s*=\s*).*$', r'\1""', text, count=1)
        atomic_write_text(self.dir / SWEEP_FILE, text)
        atomic_write_text(self.dir / BASE_FILE, dumps_toml(self.spec.base))

    def run(self) -> SweepResult:
        """Run every unfinished grid point; resumable; returns what happened."""
        import fcntl

        check_sweep_folder(self.spec, self.dir)  # refuse before touching anything
        for plan in self.plans:
            check_run_folder(plan, self.run_dir(plan.id))
        self.dir.mkdir(parents=True, exist_ok=True)
        lock = open(self.dir / LOCK_FILE, "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise SweepError(f"{self.dir}: another fedprune sweep is running in this folder") from None
        try:
            return self._run_locked()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()

    def _run_locked(self) -> SweepResult:
        self._write_files()
        self._load_manifest()
        skipped = [p.id for p in self.plans if run_status(self.run_dir(p.id)) == "done"]
        todo = [p for p in self.plans if p.id not in skipped]
        reaped = reap_orphans([self.run_dir(p.id) for p in todo if self.run_dir(p.id).exists()])
        result = SweepResult(self.dir, [], [], skipped)
        display = _Display(len(self.plans), len(skipped), self.spec.name, self.quiet)
        if reaped:
            display.log(f"stopped {len(reaped)} process(es) left over from an interrupted sweep")
        display.log(f"sweep {self.spec.name}: {len(self.plans)} runs, {len(skipped)} already done, "
                    f"{len(todo)} to run ({self.parallel} at a time) -> {self.dir}")
        old_term = signal.getsignal(signal.SIGTERM)
        in_main = threading.current_thread() is threading.main_thread()

        def on_term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        if in_main:
            signal.signal(signal.SIGTERM, on_term)
        pool = ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="sweep-run")
        futures: dict[Future, str] = {}
        try:
            with display:
                queue = list(todo)
                while queue or futures:
                    while queue and len(futures) < self.parallel and not self.stop.is_set():
                        plan = queue.pop(0)
                        futures[pool.submit(self._execute, plan, display)] = plan.id
                    finished, _ = wait(list(futures), timeout=0.5, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        rid = futures.pop(fut)
                        state = fut.result()
                        if state == "done":
                            result.done.append(rid)
                        elif state == "failed":
                            result.failed.append(rid)
                        else:
                            result.interrupted = True
        except KeyboardInterrupt:
            self.stop.set()
            result.interrupted = True
            for fut in list(futures):  # let running runs stop their Flower processes cleanly
                try:
                    fut.result()
                except Exception:  # noqa: BLE001
                    pass
        finally:
            pool.shutdown(wait=True)
            if in_main:
                signal.signal(signal.SIGTERM, old_term)
            self._save_manifest()
        return result


def default_sweep_dir(spec: SweepSpec, out: str | None) -> Path:
    """``--out``, else ``sweep.out-dir``, else ``results/sweeps/<name>``."""
    return Path(out or spec.out_dir or Path("results") / "sweeps" / spec.name).expanduser().resolve()


# ------------------------------------------------------------------------------ CLI
