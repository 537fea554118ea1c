"""Run the app on Flower's deployment engine: a SuperLink, SuperNodes, and ``flwr run`` against them.

On real devices each Raspberry Pi runs ``flower-supernode`` (see ``docs/deploy.md``); this module
starts the same processes on one host, on free loopback ports, for trying a deployment out and for
the integration test:

    python -m fedprune.deploy CONFIG --node 'partition-id=0 num-partitions=2 budget-mb=6' \\
                                     --node 'partition-id=1 num-partitions=2 budget-mb="auto"' \\
                                     --out results/deployed

``LocalDeployment`` starts ``flower-superlink`` (deployment mode, no ``--simulation``), one
``flower-supernode`` per node config, and submits the app with ``flwr run APP --run-config FILE
--stream`` through a private Flower home whose ``config.toml`` names the SuperLink. Every process
gets its own process group and all of them are stopped when the deployment ends, whatever happens.

Hard-limit mode (``memory_limits``, one entry per node, bytes or ``None``): a node's SuperNode starts
inside a memory cgroup of its own (``fedprune.memory.cgroup.MemoryCgroup``, v1 or v2) whose limit is
that many bytes, so the SuperNode and every ClientApp process it starts are killed by the kernel
when they pass it, as on a real device with that much RAM. The cgroups are created before any
process starts (``DeployError`` in one line where that is impossible) and removed at ``stop``,
which also writes ``memory_cgroups.json`` (per node: limit, peak, OOM kills) into ``work_dir``.
Like ``fedprune.launch`` this module drives Flower's command-line tools and never imports Flower.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from fedprune.memory.cgroup import CgroupUnavailable, MemoryCgroup
from fedprune.memory.process import allocator_env
from fedprune.launch import PROJECT_ROOT, LaunchError, stop_process, console_tool, wait_for_port, free_port, tool_env
from fedprune.node import format_node_config
from fedprune.process_tree import LAUNCH_ENV, end_launch, new_launch_token

LOOPBACK = "127.0.0.1"
MIB = 2**20


class DeployError(LaunchError):
    """A deployment process could not start, died, or the run did not finish in time."""


def write_cli_config(home: Path, address: str, *, name: str = "fedprune", insecure: bool = True,
                     root_certificates: str | None = None) -> Path:
    """Write ``$FLWR_HOME/config.toml`` naming one SuperLink connection (the default one)."""
    home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]", f'address = "{address}"']
    if insecure:
        lines.append("insecure = true")
    elif root_certificates:
        lines.append(f'root-certificates = "{root_certificates}"')
    path = home / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _env(home: Path, token: str) -> dict[str, str]:
    # flwr-serverapp / flwr-clientapp / flower-superexec are found on PATH; the token marks every
    # process of this deployment, including those Flower starts in sessions of their own
    return dict(tool_env(), FLWR_HOME=str(home), FLWR_DISABLE_UPDATE_CHECK="1", PYTHONUNBUFFERED="1",
                **{LAUNCH_ENV: token})


def superlink_command(port: int, fleet_port: int, control_port: int, host: str = LOOPBACK) -> list[str]:
    """``flower-superlink`` in deployment mode, insecure, every API bound to ``host``.

    In flwr 1.41 the Control, Fleet and ServerAppIo APIs are served over HTTP on ``--port``; the
    deprecated gRPC addresses are still opened, so they are pinned to free ports on ``host`` too.
    """
    return [console_tool("flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
            "--database", ":flwr-in-memory:", "--host", host, "--port", str(port),
            "--fleet-api-address", f"{host}:{fleet_port}",
            "--control-api-address", f"{host}:{control_port}"]


def supernode_command(superlink: str, node_config: Mapping[str, Any] | str, port: int,
                      host: str = LOOPBACK) -> list[str]:
    """``flower-supernode`` connected to ``superlink`` (host:port), insecure, with its node config."""
    conf = node_config if isinstance(node_config, str) else format_node_config(node_config)
    return [console_tool("flower-supernode"), "--insecure", "--superlink", superlink,
            "--host", host, "--port", str(port), "--node-config", conf]


@dataclass
class LocalDeployment:
    """A SuperLink and N SuperNodes on loopback; use as a context manager, then ``run(config)``."""

    work_dir: Path
    node_configs: Sequence[Mapping[str, Any] | str]
    app_dir: Path = PROJECT_ROOT
    startup_timeout: float = 60.0
    port: int = 0  # SuperLink HTTP port (0: a free one)
    memory_limits: Sequence[int | None] = ()  # per node: its cgroup's limit in bytes (None: no cgroup)
    token: str = field(default_factory=lambda: new_launch_token("deploy"), init=False)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict, init=False)
    ports: list[int] = field(default_factory=list, init=False)  # every port handed to a process
    _logs: list[Any] = field(default_factory=list, init=False, repr=False)
    cgroups: dict[str, MemoryCgroup] = field(default_factory=dict, init=False)

    @property
    def superlink_address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def cli_home(self) -> Path:
        return self.work_dir / "flwr-cli"

    def log_path(self, name: str) -> Path:
        return self.work_dir / f"{name}.log"

    def _spawn(self, name: str, cmd: list[str], home: Path) -> subprocess.Popen:
        home.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path(name), "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        group = self.cgroups.get(name)
        env = _env(home, self.token)
        if name.startswith("supernode-"):  # the device's process settings (allocator, kernel caches)
            env.update(allocator_env())
        proc = subprocess.Popen(cmd, cwd=self.app_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=None if group is None else group.preexec())
        self.procs[name] = proc
        return proc

    def start(self) -> "LocalDeployment":
        """Start the SuperLink, wait for its port, then start every SuperNode."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._create_cgroups()
            self.port = self.port or free_port()
            self.ports = [self.port, free_port(), free_port()]
            link = self._spawn("superlink", superlink_command(*self.ports),
                               self.work_dir / "superlink" / ".flwr")
            wait_for_port(self.port, self.startup_timeout, link)
            for i, conf in enumerate(self.node_configs):
                self.ports.append(free_port())
                self._spawn(f"supernode-{i}", supernode_command(self.superlink_address, conf, self.ports[-1]),
                            self.work_dir / f"supernode-{i}" / ".flwr")
            write_cli_config(self.cli_home, self.superlink_address)
            self.check_alive()
        except BaseException:
            self.stop()
            raise
        return self

    def _create_cgroups(self) -> None:
        """One memory cgroup per node that has a limit (``DeployError`` in one line if impossible)."""
        if self.memory_limits and len(self.memory_limits) != len(self.node_configs):
            raise DeployError(f"{len(self.memory_limits)} memory limits for {len(self.node_configs)} nodes")
        for i, limit in enumerate(self.memory_limits):
            if limit is None:
                continue
            try:
                self.cgroups[f"supernode-{i}"] = MemoryCgroup.create(f"fedprune-{self.token.rsplit('#', 1)[-1]}-node{i}", int(limit))
            except (CgroupUnavailable, ValueError) as err:
                raise DeployError(f"hard limit for node {i}: {err}") from None

    def memory_report(self) -> dict[str, dict[str, Any]]:
        """Per hard-limited node: its cgroup's limit, peak usage and OOM kills so far."""
        return {name: {"cgroup": str(g.path), "version": g.version, "limit_bytes": g.limit_bytes,
                       "peak_bytes": g.peak_bytes(), "oom_kills": g.oom_kills()}
                for name, g in self.cgroups.items()}

    def _remove_cgroups(self) -> None:
        if not self.cgroups:
            return
        (self.work_dir / "memory_cgroups.json").write_text(json.dumps(self.memory_report(), indent=1))
        for group in self.cgroups.values():
            group.remove()
        self.cgroups.clear()

    def check_alive(self) -> None:
        """``DeployError`` naming the first SuperLink/SuperNode process that has exited."""
        for name, proc in self.procs.items():
            if name.startswith("flwr-run"):
                continue
            if proc.poll() is not None:
                raise DeployError(f"{name} exited with code {proc.returncode}; see {self.log_path(name)}")

    def online_nodes(self) -> int:
        """How many SuperNodes the SuperLink lists as online (``flwr supernode ls``); 0 on error."""
        proc = subprocess.run([console_tool("flwr"), "supernode", "ls", "--format", "json"], cwd=self.app_dir,
                              env=_env(self.cli_home, self.token), capture_output=True, text=True,
                              timeout=60)
        try:
            nodes = json.loads(proc.stdout[proc.stdout.index("{"):])["nodes"]
        except (ValueError, KeyError, TypeError):
            return 0
        return sum(1 for n in nodes if n.get("status") == "online")

    def wait_for_nodes(self, needed: int, timeout: float) -> None:
        """Return once ``needed`` SuperNodes are online; ``DeployError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        online = 0
        while time.monotonic() < deadline:
            self.check_alive()
            online = self.online_nodes()
            if online >= needed:
                return
            time.sleep(1.0)
        raise DeployError(f"only {online} of {needed} SuperNodes connected within {timeout:.0f} s; "
                          f"logs in {self.work_dir}")

    def run(self, config_file: Path, timeout: float | None = None,
            on_poll: Callable[[], None] | None = None) -> int:
        """Submit the app with ``flwr run --stream`` and wait for the run; returns its exit code."""
        cmd = [console_tool("flwr"), "run", str(self.app_dir), "--run-config", str(config_file), "--stream"]
        runner = self._spawn("flwr-run", cmd, self.cli_home)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while runner.poll() is None:
                self.check_alive()
                if on_poll is not None:
                    on_poll()
                if deadline is not None and time.monotonic() > deadline:
                    raise DeployError(f"the run exceeded its {timeout:.0f} s limit; see {self.work_dir}")
                time.sleep(0.5)
            if on_poll is not None:
                on_poll()
            return int(runner.returncode)
        finally:
            stop_process(runner)

    def stop(self) -> None:
        """Stop every process started here (SuperNodes first) and wait until all are gone, close
        the logs; safe to repeat."""
        for name in sorted(self.procs, key=lambda n: n == "superlink"):
            stop_process(self.procs[name], grace=10.0)
        left = end_launch(self.token)  # what Flower started in sessions of its own
        self._remove_cgroups()
        for log in self._logs:
            log.close()
        self._logs.clear()
        for name in list(self.procs):
            home = self.work_dir / name / ".flwr"
            shutil.rmtree(home, ignore_errors=True)  # Flower's private state (FABs, keys)
        shutil.rmtree(self.cli_home, ignore_errors=True)
        if left:
            raise DeployError(f"processes {left} of the deployment did not exit; stop them by hand")

    def __enter__(self) -> "LocalDeployment":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def parse_node_args(nodes: Sequence[str] | None, count: int | None) -> list[str]:
    """``--node`` strings as given, or ``count`` plain ``partition-id=i num-partitions=count`` nodes."""
    if nodes:
        return list(nodes)
    n = count or 2
    return [format_node_config({"partition-id": i, "num-partitions": n}) for i in range(n)]


def node_partition(node_config: Mapping[str, Any] | str) -> int:
    """The ``partition-id`` of a node config (mapping or ``--node-config`` string); ValueError if none."""
    if not isinstance(node_config, str):
        return int(node_config["partition-id"])
    found = re.search(r"(?:^|\s)partition-id\s*=\s*(\d+)", node_config)
    if found is None:
        raise ValueError(f"node config {node_config!r}: no partition-id")
    return int(found.group(1))


def hard_limits(cfg: Any, node_configs: Sequence[Mapping[str, Any] | str], limit_mb: float | None = None) -> list[int]:
    """Each node's memory limit in bytes: ``limit_mb`` for every node when given, else the RAM of the
    node's device in the fleet profiles (``fleet.devices``). ValueError (one line) when neither says."""
    from fedprune.fleet import client_devices, load_profiles

    if limit_mb is not None:
        if not limit_mb > 0:
            raise ValueError(f"--hard-limit-mb={limit_mb}: expected MB > 0")
        return [int(limit_mb * MIB) for _ in node_configs]
    if not cfg.fleet.devices:
        raise ValueError("--hard-limit takes each device's RAM from fleet.devices, which this config does not "
                         "set; set it or pass --hard-limit-mb")
    devices, profiles = client_devices(cfg), load_profiles(cfg.fleet.profiles_file)
    limits = []
    for conf in node_configs:
        pid = node_partition(conf)
        if not 0 <= pid < len(devices):
            raise ValueError(f"node partition-id {pid}: the fleet has {len(devices)} clients")
        limits.append(int(profiles[devices[pid]].ram_mb * MIB))
    return limits


def nodes_needed(cfg: Any) -> int:
    """How many SuperNodes a run waits for before its first round (the strategy's minimum)."""
    return max(cfg.fleet.min_clients, cfg.fleet.clients_per_round)
