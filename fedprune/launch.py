"""Start a federated simulation with Flower's own tooling, in an isolated local SuperLink.

``run_flower_simulation`` writes nothing but ``<out_dir>/flwr.log`` and ``<out_dir>/.flwr`` (the
private Flower home). It starts ``flower-superlink --simulation`` on free loopback ports, submits the
app with ``flwr run APP --run-config CONFIG --federation-config ... --stream`` (the supported path in
flwr 1.41), waits for the run to end, and always stops the SuperLink it started. The simulation's
clients run on Ray: a local Ray, or an existing cluster when ``ray_address`` (or ``RAY_ADDRESS``) is
set. Every process the run starts carries a launch token in its environment, and all of them
are ended, and waited for, before ``run_flower_simulation`` returns (``fedprune.process_tree``).
This module never imports Flower: it drives Flower's command-line tools.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fedprune.process_tree import LAUNCH_ENV, end_launch, new_launch_token

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class LaunchError(RuntimeError):
    """The Flower tooling could not start or finished without results."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen) -> None:
    """Return once something listens on loopback ``port``; ``LaunchError`` if ``proc`` exits first or
    ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LaunchError(f"flower-superlink exited with code {proc.returncode} before it was ready")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise LaunchError(f"flower-superlink did not open port {port} within {timeout:.0f} s")


def console_tool(name: str) -> str:
    """The path of a console tool (``flwr``, ``flower-superlink``, ``ray``, ...): beside this Python
    first, else on PATH; ``LaunchError`` when neither has it."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise LaunchError(f"{name!r} not found: install the project (pip install -e .) first")
    return found


def tool_env() -> dict[str, str]:
    """This process's environment with its Python's script folder first on PATH.

    Flower's SuperLink starts ``flower-superexec`` (and the simulation, Ray) by name, so they must be
    found even when the virtual environment is not activated (``.venv/bin/fedprune ...``, make, CI).
    """
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    return dict(os.environ, PATH=bin_dir + (os.pathsep + path if path else ""))


def _num(x: float) -> int | float:
    """Flower's federation config wants integers where the value is whole."""
    return int(x) if float(x).is_integer() else float(x)


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """End ``proc`` and its process group: SIGTERM, then SIGKILL after ``grace`` seconds; waits."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@dataclass
class SimulationSpec:
    """What one simulated federation needs: app, run config file, results folder, resources."""

    config_file: Path  # resolved experiment config (TOML), passed as --run-config
    out_dir: Path
    num_supernodes: int
    client_cpus: int = 1
    client_gpus: float = 0.0
    ray_address: str = ""
    app_dir: Path = PROJECT_ROOT
    timeout: float | None = None

    @classmethod
    def for_run(cls, cfg: Any, run_dir: Path) -> "SimulationSpec":
        """The spec of a prepared results folder (``config.toml`` written) for the config ``cfg``."""
        return cls(config_file=run_dir / "config.toml", out_dir=run_dir, num_supernodes=cfg.fleet.num_clients,
                   client_cpus=cfg.simulation.client_cpus, client_gpus=cfg.simulation.client_gpus,
                   ray_address=cfg.simulation.ray_address)


def _end_launch(token: str, procs: list[subprocess.Popen]) -> None:
    """Signal the launch's process groups, then end every process carrying its token, and wait.

    SIGINT/SIGTERM are ignored meanwhile (main thread only) so a second Ctrl-C cannot cut the
    cleanup short; it is bounded by ``end_launch``'s timeout.
    """
    in_main = threading.current_thread() is threading.main_thread()
    saved = [(s, signal.signal(s, signal.SIG_IGN)) for s in (signal.SIGINT, signal.SIGTERM)] if in_main else []
    try:
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        left = end_launch(token)
        for proc in procs:
            stop_process(proc, grace=1.0)
        if left:
            raise LaunchError(f"processes {left} of the run did not exit; stop them by hand")
    finally:
        for sig, handler in saved:
            signal.signal(sig, handler)


def _launch_env(home: Path, token: str, ray_address: str) -> dict[str, str]:
    env = dict(tool_env(), FLWR_HOME=str(home), FLWR_DISABLE_UPDATE_CHECK="1", PYTHONUNBUFFERED="1")
    env[LAUNCH_ENV] = token  # inherited by the SuperExec, the simulation and Ray: see process_tree
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    return env


def run_flower_simulation(spec: SimulationSpec,
                          on_poll: Callable[[], None] | None = None) -> int:
    """Run the app to completion; returns ``flwr run``'s exit code.

    Whatever happens (an error, Ctrl-C, SIGTERM raised as ``KeyboardInterrupt``), every process the
    run started, the SuperLink, SuperExec, simulation and local Ray processes, is ended and gone
    before this returns or raises.
    """
    out = spec.out_dir
    out.mkdir(parents=True, exist_ok=True)
    home = out / ".flwr"
    home.mkdir(exist_ok=True)
    http_port, fleet_port, control_port = free_port(), free_port(), free_port()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "fedprune"\n\n[superlink.fedprune]\n'
        f'address = "127.0.0.1:{http_port}"\ninsecure = true\n')
    token = new_launch_token(str(out))
    env = _launch_env(home, token, spec.ray_address)
    procs: list[subprocess.Popen] = []
    with open(out / "flwr.log", "ab") as log:
        try:
            procs.append(subprocess.Popen(
                [console_tool("flower-superlink"), "--insecure", "--simulation",
                 "--disable-runtime-dependency-installation", "--database", ":flwr-in-memory:",
                 "--host", "127.0.0.1", "--port", str(http_port),
                 "--fleet-api-address", f"127.0.0.1:{fleet_port}",
                 "--control-api-address", f"127.0.0.1:{control_port}"],
                cwd=spec.app_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            wait_for_port(http_port, 60, procs[0])
            fed = [f"num-supernodes={spec.num_supernodes}",
                   f"client-resources-num-cpus={_num(spec.client_cpus)}",
                   f"client-resources-num-gpus={_num(spec.client_gpus)}"]
            cmd = [console_tool("flwr"), "run", str(spec.app_dir), "--run-config", str(spec.config_file),
                   "--federation-config", " ".join(fed), "--stream"]
            procs.append(subprocess.Popen(cmd, cwd=spec.app_dir, env=env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
            return _wait_runner(procs[1], spec.timeout, on_poll)
        finally:
            _end_launch(token, procs[::-1])
            shutil.rmtree(home, ignore_errors=True)  # Flower's private state; the run's files stay


def _wait_runner(runner: subprocess.Popen, timeout: float | None,
                 on_poll: Callable[[], None] | None) -> int:
    """Poll until ``runner`` exits; its exit code. ``LaunchError`` past ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    stop = threading.Event()
    while runner.poll() is None:
        if on_poll is not None:
            on_poll()
        if deadline is not None and time.monotonic() > deadline:
            raise LaunchError(f"simulation exceeded its {timeout:.0f} s limit")
        stop.wait(0.5)
    if on_poll is not None:
        on_poll()
    return int(runner.returncode)
