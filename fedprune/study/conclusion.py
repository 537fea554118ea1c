"""The report's closing note, generated from the comparison rows (:mod:`fedprune.study.comparison`).

Per setting it names the winner with its margin over the runner-up and the seeds' spread, compares
fedprune's best method with the best memory-constrained baseline and with unconstrained FedAvg, and
says plainly where fedprune's methods lose. At the tightest budget it checks the study's goal: at
least as accurate as every baseline, within ``GOAL_GAP`` points of unconstrained FedAvg, and a final
model at least ``GOAL_SMALLER`` times smaller than the dense one.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

from fedprune.study.comparison import PLATEAU_TOL, PLATEAU_WINDOW, UPPER_BOUND

GOAL_GAP = 1.5  # accuracy points below unconstrained FedAvg
GOAL_SMALLER = 5.0  # dense parameters / final parameters


def _pts(row: dict[str, Any]) -> float:
    return 100.0 * float(row["accuracy_mean"])


def _spread(row: dict[str, Any]) -> str:
    if row["seeds"] < 2:
        return "1 seed"
    return f"± {100 * (row['accuracy_std'] or 0):.2f} over {row['seeds']} seeds"


def _acc(row: dict[str, Any]) -> str:
    return f"`{row['method']}` {_pts(row):.2f}% ({_spread(row)})"


def margin_verdict(a: dict[str, Any], b: dict[str, Any]) -> str:
    """How the accuracy difference of rows ``a`` and ``b`` compares with their seeds' spread: a tie
    when it is no larger than the larger of the two standard deviations."""
    if a["seeds"] < 2 or b["seeds"] < 2:
        return "one seed: no spread known"
    noise = 100 * max(a["accuracy_std"] or 0, b["accuracy_std"] or 0)
    return ("within the seeds' spread: a tie" if abs(_pts(a) - _pts(b)) <= noise
            else "more than the seeds' spread")


def _rivals(ranked: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The memory-constrained baselines (most accurate first) and the unconstrained FedAvg row."""
    theirs = [r for r in ranked if r["baseline"] and r["method"] != UPPER_BOUND]
    return theirs, next((r for r in ranked if r["method"] == UPPER_BOUND), None)


def _winner_line(ranked: list[dict[str, Any]]) -> str:
    win = ranked[0]
    if len(ranked) == 1:
        return f"only {_acc(win)} finished"
    run = ranked[1]
    margin = _pts(win) - _pts(run)
    return f"winner {_acc(win)}, {margin:.2f} points ahead of {_acc(run)} ({margin_verdict(win, run)})"


def _fedprune_line(ranked: list[dict[str, Any]]) -> list[str]:
    ours = [r for r in ranked if not r["baseline"]]
    theirs, upper = _rivals(ranked)
    if not ours:
        return []
    best, lines = ours[0], []
    if theirs:
        rival = theirs[0]
        d = _pts(best) - _pts(rival)
        verdict = margin_verdict(best, rival)
        lines.append(f"fedprune's best, {_acc(best)}, **loses** to the baseline {_acc(rival)} by "
                     f"{-d:.2f} points ({verdict})" if d < 0 else
                     f"fedprune's best, {_acc(best)}, beats the best constrained baseline {_acc(rival)} "
                     f"by {d:.2f} points ({verdict})")
    if upper is not None:
        lines.append(f"it is {_pts(upper) - _pts(best):.2f} points below unconstrained FedAvg "
                     f"({_pts(upper):.2f}%)")
    if best.get("smaller_mean"):
        lines.append(f"its final model is {best['smaller_mean']:.1f}x smaller than the dense one")
    return lines


def convergence_line(rows: Sequence[dict[str, Any]]) -> str:
    """Whether unconstrained FedAvg plateaued in every setting (the study's convergence criterion)."""
    upper = [r for r in rows if r["method"] == UPPER_BOUND]
    crit = (f"mean test accuracy of the last {PLATEAU_WINDOW} rounds less than {100 * PLATEAU_TOL:.1f} "
            f"points above the {PLATEAU_WINDOW} before")
    if not upper:
        return f"Convergence ({crit}): not checked, no unconstrained FedAvg run."
    if all(r["plateaued"] == r["seeds"] for r in upper):
        last = max(r["plateau_round_max"] for r in upper)
        return (f"Convergence ({crit}): unconstrained FedAvg plateaued in every run, by round {last} "
                f"of {max(r['rounds'] for r in upper)}.")
    missing = sum(r["seeds"] - r["plateaued"] for r in upper)
    where = sorted({_rest(r["setting"]) or r["setting"] for r in upper if r["plateaued"] < r["seeds"]})
    return (f"Convergence ({crit}): **not reached** by unconstrained FedAvg in {missing} run(s) of "
            f"{max(r['rounds'] for r in upper)} rounds ({'; '.join(where)}): the accuracies there are not "
            f"final.")


def _goal_conditions(best: dict[str, Any], ranked: list[dict[str, Any]]) -> list[tuple[bool, str]]:
    theirs, upper = _rivals(ranked)
    out = []
    if theirs:
        ok = _pts(best) >= _pts(theirs[0])
        out.append((ok, f"at least as accurate as every baseline (best baseline `{theirs[0]['method']}` "
                        f"{_pts(theirs[0]):.2f}%; difference {_pts(best) - _pts(theirs[0]):+.2f} points, "
                        f"{margin_verdict(best, theirs[0])})"))
    if upper is not None:
        gap = _pts(upper) - _pts(best)
        out.append((gap <= GOAL_GAP, f"within {GOAL_GAP} points of unconstrained FedAvg (gap {gap:.2f})"))
    smaller = best.get("smaller_mean") or 0.0
    out.append((smaller >= GOAL_SMALLER, f"final model >= {GOAL_SMALLER:g}x smaller than dense ({smaller:.1f}x)"))
    return out


def goal_check(ranked: list[dict[str, Any]]) -> list[str]:
    """The goal's three conditions at one setting for fedprune's most accurate configuration, each
    marked met or not, with its number; then which fedprune configurations meet all three."""
    ours = [r for r in ranked if not r["baseline"]]
    if not ours:
        return ["no fedprune method finished here: the goal cannot be checked"]
    out = [f"{'met' if ok else 'NOT met'}: {text}" for ok, text in _goal_conditions(ours[0], ranked)]
    if len(ours) > 1:
        meeting = [r for r in ours if all(ok for ok, _ in _goal_conditions(r, ranked))]
        out.append(f"of the {len(ours)} fedprune configurations here, all three hold for "
                   + (", ".join(f"{_acc(r)}, {r.get('smaller_mean') or 0:.1f}x smaller" for r in meeting)
                      if meeting else "none"))
    return out


def _rest(setting: str) -> str:
    return setting.split(", ", 1)[1] if ", " in setting else ""


def with_upper_bound(by_setting: dict[str, list[dict[str, Any]]]) -> None:
    """Give every setting without an unconstrained FedAvg row the one of a setting that differs only
    in its budget (``fedavg`` ignores the budget, so one run per partitioner and seed serves all)."""
    uppers = {_rest(s): r for s, members in by_setting.items() for r in members if r["method"] == UPPER_BOUND}
    for setting, members in by_setting.items():
        if not any(r["method"] == UPPER_BOUND for r in members) and _rest(setting) in uppers:
            members.append({**uppers[_rest(setting)], "setting": setting})


def conclusion_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The closing note (Markdown): one line per setting, then the goal at each tightest-budget setting."""
    by_setting: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("accuracy_mean") is not None:
            by_setting[r["setting"]].append(r)
    with_upper_bound(by_setting)
    if not by_setting:
        return "No finished run: nothing to conclude.\n"
    parts = [convergence_line(rows), ""]
    for setting, members in by_setting.items():
        ranked = sorted(members, key=lambda r: -r["accuracy_mean"])
        parts.append(f"- **{setting}**: " + "; ".join([_winner_line(ranked), *_fedprune_line(ranked)]) + ".")
    lowest = min(m[0]["budget_mb"] for m in by_setting.values())
    for setting, members in by_setting.items():
        if members[0]["budget_mb"] == lowest:
            ranked = sorted(members, key=lambda r: -r["accuracy_mean"])
            parts += ["", f"Goal at the tightest budget ({setting}):", ""]
            parts += [f"- {line}" for line in goal_check(ranked)]
    return "\n".join(parts) + "\n"


def comparison_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The methods side by side per setting (Markdown): accuracy, peak, size, upload, participation."""
    from fedprune.study.comparison import PEAKS
    from fedprune.study.markdown import fmt, md_table

    if not rows:
        return ""
    tiers = list(dict.fromkeys(k.split(":", 1)[1] for r in rows for k in r if k.startswith("participation:")))
    header = ["setting", "method", "seeds", "accuracy (%)", "seed range (%)",
              *(f"largest client {name} (MB)" for _, _, name in PEAKS), "final params", "x smaller",
              "upload (MB)"] + [f"trained: {t} (%)" for t in tiers]
    lines = []
    for r in rows:
        acc = "-" if r["accuracy_mean"] is None else (
            f"{100 * r['accuracy_mean']:.2f} ± {100 * (r['accuracy_std'] or 0):.2f}")
        rng = "-" if r["accuracy_min"] is None else f"{100 * r['accuracy_min']:.2f}-{100 * r['accuracy_max']:.2f}"
        lines.append([r["setting"], r["method"] + (" (baseline)" if r["baseline"] else ""), str(r["seeds"]),
                      acc, rng, *(fmt(r.get(f"{f}_mean"), "mb") for f, _, _ in PEAKS),
                      fmt(r.get("final_params_mean"), "int"),
                      fmt(r.get("smaller_mean"), "x"), fmt(r.get("upload_mb_mean"), "mb")]
                     + [fmt(r.get(f"participation:{t}"), "pct") for t in tiers])
    return md_table(header, lines) + "\n"
