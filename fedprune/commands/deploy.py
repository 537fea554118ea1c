"""``fedprune deploy-local CONFIG``: the run on a local SuperLink and SuperNodes (deployment engine)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from fedprune.deploy import LocalDeployment, hard_limits, nodes_needed, parse_node_args
from fedprune.errors import UsageError
from fedprune.progress import round_progress
from fedprune.results import CONFIG_FILE, SUMMARY_FILE
from fedprune.run_folder import new_run_dir, prepare_run_dir, read_config, validate_for_run
from fedprune.run_lock import LAUNCH_LOCK, RunLock


def add_parser(sub: Any) -> None:
    """Register ``fedprune deploy-local`` on the CLI's sub-parsers."""
    d = sub.add_parser("deploy-local", help="run on a local Flower SuperLink + SuperNodes "
                       "(deployment engine, loopback)")
    _fill_parser(d)
    d.set_defaults(func=cmd_deploy_local)


def _fill_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment TOML file")
    p.add_argument("--out", help="results folder (default: results/<run.name>)")
    p.add_argument("--node", action="append", metavar="NODE_CONFIG",
                   help="one SuperNode's --node-config, e.g. 'partition-id=0 num-partitions=2 "
                        "budget-mb=6' (repeat per node)")
    p.add_argument("--nodes", type=int, help="without --node: this many plain SuperNodes (default 2)")
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    p.add_argument("--startup-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="the SuperNodes must connect within this many seconds (default 120)")
    p.add_argument("--hard-limit", action="store_true",
                   help="each SuperNode's process tree in its own memory cgroup limited to its device's RAM "
                        "(fleet profiles); the kernel kills what passes it")
    p.add_argument("--hard-limit-mb", type=float, default=None, metavar="MB",
                   help="with --hard-limit: this limit for every node instead of the device RAM")


def _limits(args: argparse.Namespace, cfg: Any, nodes: list[str]) -> list[int]:
    """The nodes' hard memory limits in bytes (empty without ``--hard-limit``)."""
    if args.hard_limit_mb is not None and not args.hard_limit:
        raise UsageError("--hard-limit-mb needs --hard-limit")
    if not args.hard_limit:
        return []
    try:
        limits = hard_limits(cfg, nodes, args.hard_limit_mb)
    except ValueError as err:
        raise UsageError(str(err)) from None
    print("fedprune: hard memory limits (MB): " + ", ".join(f"{lim / 2**20:.0f}" for lim in limits), flush=True)
    return limits


def cmd_deploy_local(args: argparse.Namespace) -> int:
    """``deploy-local``: the run on a local SuperLink + SuperNodes (deployment engine)."""
    cfg = read_config(args.config)
    validate_for_run(cfg, args.config)
    nodes = parse_node_args(args.node, args.nodes)
    if len(nodes) < nodes_needed(cfg):
        raise UsageError(f"{len(nodes)} --node(s) given but {args.config} needs {nodes_needed(cfg)} "
                         f"(fleet.min-clients = {cfg.fleet.min_clients}, clients-per-round = "
                         f"{cfg.fleet.clients_per_round}); add --node options or lower min-clients")
    limits = _limits(args, cfg, nodes)
    with RunLock(new_run_dir(cfg, args.out), LAUNCH_LOCK):
        cfg, run_dir = prepare_run_dir(cfg, args.out, None)
        args.run_dir = run_dir  # named by the interruption message
        print(f"fedprune: deploying {cfg.run.name!r} on a local SuperLink with {len(nodes)} SuperNodes "
              f"-> {run_dir}", flush=True)
        t0 = time.perf_counter()
        progress, poll = round_progress(run_dir, cfg.run.num_rounds)
        with LocalDeployment(run_dir / "deployment", nodes, memory_limits=limits) as dep, progress:
            dep.wait_for_nodes(nodes_needed(cfg), args.startup_timeout)
            code = dep.run(run_dir / CONFIG_FILE, timeout=args.timeout, on_poll=poll)
    if not (run_dir / SUMMARY_FILE).is_file():
        print(f"error: the run ended (flwr exit code {code}) without a summary; logs in "
              f"{run_dir / 'deployment'}", file=sys.stderr)
        return 1
    print(f"fedprune: done in {time.perf_counter() - t0:.1f} s; results in {run_dir}")
    return 0


