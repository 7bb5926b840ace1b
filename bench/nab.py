"""The default anomaly detector on the Numenta Anomaly Benchmark (NAB).

Scores ``bench/nab_detector.py`` (exactly the production default) with the
shared NAB scorer on the shared corpus, both found beside this repository
(``../shared/tools/nab`` and ``../shared/data/nab``, relative to the repo root),
and checks causality on prefixes. Also measured:

* points_per_s: samples scored per second by one process (one core);
* leave one group out: for each of the five data folders, the parameters
  (a small grid of threshold and alpha) and the alarm threshold are chosen on
  the other four and the folder is scored at that fixed threshold. Per fold it
  reports the normalised score (undefined for the folder without anomalies,
  whose raw score is its false-positive cost); the headline is the sum of the
  five held-out raw scores normalised as NAB normalises the whole corpus. A
  second figure fixes the threshold at ALARM_SCORE, where production alarms,
  and chooses only the parameters;
* with --candidates: the same figures for the reference detectors, river's
  detectors (when river is installed) and the default with one of its
  mechanisms switched off.

    uv run python bench/nab.py [--candidates] [--per-file]
    uv run --with river python bench/nab.py --candidates

Writes bench/results/nab.json.
"""

import argparse
import contextlib
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared"
TOOLS = SHARED / "tools" / "nab"
DATA = SHARED / "data" / "nab"
RESULTS = HERE / "results" / "nab.json"
sys.path[:0] = [str(ROOT), str(TOOLS)]

import nab_detector  # noqa: E402
import nabscore  # noqa: E402
import reference_detectors  # noqa: E402

from monitoring.detectors import ALARM_SCORE, RollingP95Detector, get_detector  # noqa: E402
from monitoring.detectors import robust_seasonal as rs  # noqa: E402

PROFILES = list(nabscore.PROFILES)
SHORT = {"standard": "standard", "reward_low_FP_rate": "low_fp", "reward_low_FN_rate": "low_fn"}
TARGETS = {"standard": 65.0, "low_fp": 55.0, "low_fn": 70.0, "points_per_s": 50_000}
# The leave-one-group-out search: few values of the default's two parameters.
GRID = {"threshold": [1.5, 2.0, 3.0], "alpha": [0.002, 0.005, 0.02]}


def default_with(**params):
    def score_series(timestamps, values):
        return nab_detector.run(get_detector(**params), timestamps, values)

    return score_series


def folder(name: str) -> str:
    return name.split("/", 1)[0]


def normalised(raw: float, null_raw: float, perfect: float) -> float | None:
    if perfect == null_raw:
        return None
    return 100.0 * (raw - null_raw) / (perfect - null_raw)


def null_raw(files, prep, profile) -> float:
    """Raw score of NAB's null detector (0.5 everywhere) on these files."""
    null = np.full(sum(f.n - f.probation for f in files), 0.5)
    return float(np.max(nabscore.sweep(null, prep, nabscore.PROFILES[profile])[1]))


def leave_one_group_out(files, scores_by_params: dict, alarm: float | None = None) -> dict:
    """Choose parameters and threshold on four folders, score the fifth at that threshold.

    With ``alarm`` the threshold is not chosen but fixed there (the production
    operating point); only the parameters are chosen on the four folders.
    """
    groups = sorted({folder(f.name) for f in files})
    folds, pooled = [], dict.fromkeys(PROFILES, 0.0)
    for held in groups:
        train = [f for f in files if folder(f.name) != held]
        test = [f for f in files if folder(f.name) == held]
        prep_train, prep_test = nabscore.prepare(train), nabscore.prepare(test)
        fold = {"held_out": held, "files": len(test), "windows": prep_test.n_windows_total}
        for profile in PROFILES:
            best = None
            for key, scores in scores_by_params.items():
                if alarm is None:
                    result = nabscore.score_corpus(scores, train, prep_train)["profiles"][profile]
                    candidate = (result["normalized"], key, result["threshold"])
                else:
                    raw = nabscore.score_at_threshold(scores, train, prep_train, profile, alarm)
                    candidate = (raw, key, alarm)
                if best is None or candidate[0] > best[0]:
                    best = candidate
            _, key, threshold = best
            raw = nabscore.score_at_threshold(
                scores_by_params[key], test, prep_test, profile, threshold
            )
            perfect = nabscore.PROFILES[profile]["tp"] * prep_test.n_windows_total
            pooled[profile] += raw
            fold[SHORT[profile]] = {
                "score": _round(normalised(raw, null_raw(test, prep_test, profile), perfect)),
                "raw": round(raw, 3),
                "params": dict(key),
                "threshold": threshold,
            }
        folds.append(fold)
    prep = nabscore.prepare(files)
    out = {}
    for profile in PROFILES:
        perfect = nabscore.PROFILES[profile]["tp"] * prep.n_windows_total
        out[SHORT[profile]] = _round(
            normalised(pooled[profile], null_raw(files, prep, profile), perfect)
        )
        defined = [
            f[SHORT[profile]]["score"] for f in folds if f[SHORT[profile]]["score"] is not None
        ]
        out[f"{SHORT[profile]}_mean_of_folds"] = _round(sum(defined) / len(defined))
    out["folds"] = folds
    return out


def _round(value):
    return None if value is None else round(value, 2)


def in_sample(files, scores) -> dict:
    result = nabscore.score_corpus(scores, files)
    return {
        SHORT[p]: {
            "score": round(v["normalized"], 2),
            "threshold": v["threshold"],
            "windows_detected": v["windows_detected"],
            "fp_rows": v["fp_rows"],
        }
        for p, v in result["profiles"].items()
    } | {"windows": result["n_windows"], "scored_rows": result["n_scored_rows"]}


def points_per_second(files, score_series, repeats: int = 3) -> float:
    """Samples per second in this one process, best of a few runs over the corpus."""
    total = sum(f.n for f in files)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for f in files:
            score_series(f.timestamps, f.values)
        best = min(best, time.perf_counter() - start)
    return round(total / best)


def evaluate(label, files, make, grid=None, jobs=0, calibrated=True) -> dict:
    """In-sample and leave-one-group-out figures for a detector factory.

    ``calibrated``: the detector alarms at ALARM_SCORE, so the leave-one-group-out
    figure at that fixed threshold means something (not so for the references).
    """
    grid = grid or {}
    keys = list(grid)
    scores_by_params = {}
    for combo in itertools.product(*(grid[k] for k in keys)):
        params = tuple(zip(keys, combo, strict=True))
        scores_by_params[params] = nabscore.run_detector(make(**dict(params)), files, jobs)
    default = nabscore.run_detector(make(), files, jobs)
    if not grid:
        scores_by_params[()] = default
    report = {"in_sample": in_sample(files, default)}
    report["leave_one_group_out"] = leave_one_group_out(files, scores_by_params)
    report["leave_one_group_out_at_alarm_score"] = (
        leave_one_group_out(files, scores_by_params, ALARM_SCORE) if calibrated else None
    )
    print(summary_line(label, report), flush=True)
    return report


def summary_line(label, report) -> str:
    ins, logo = report["in_sample"], report["leave_one_group_out"]
    fixed = report["leave_one_group_out_at_alarm_score"]
    cells = " ".join(
        f"{SHORT[p]} {ins[SHORT[p]]['score']:5.1f}/{logo[SHORT[p]]:5.1f}/"
        + (f"{fixed[SHORT[p]]:5.1f}" if fixed else "   - ")
        for p in PROFILES
    )
    return f"  {label:<40} {cells}"


@contextlib.contextmanager
def patched(module, **constants):
    saved = {k: getattr(module, k) for k in constants}
    for k, v in constants.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(module, k, v)


def candidates(files, jobs) -> dict:
    """The references, a maintained library, and the default minus one mechanism at a time."""
    out = {}

    def ablation(label, **constants):
        def make(**params):
            inner = default_with(**params)

            def score_series(timestamps, values):
                with patched(rs, **constants):
                    return inner(timestamps, values)

            return score_series

        out[label] = evaluate(label, files, make, GRID, jobs)
        out[label]["points_per_s"] = points_per_second(files, make(), repeats=1)

    def fixed(label, fn, calibrated=False):
        out[label] = evaluate(label, files, lambda: fn, None, jobs, calibrated)
        out[label]["points_per_s"] = points_per_second(files, fn, repeats=1)

    fixed("windowed_gaussian (shared reference)", reference_detectors.windowed_gaussian)
    fixed("rolling_p95 n=500 (shared reference)", reference_detectors.rolling_p95)
    fixed(
        "rolling_p95 n=500 sampled 1 in 5 (monitoring.detectors)",
        lambda ts, vs: nab_detector.run(RollingP95Detector(), ts, vs),
    )
    for label, fn in river_candidates().items():
        fixed(label, fn)
    ablation("default without the seasonal model", SEASON_GAIN=0.0)
    ablation("default without the sustained-shift stage", SHIFT_SIGMAS=math.inf)
    ablation("default scoring every row of an excursion", DAMPING=1.0, QUIET=0)
    ablation("default with a fixed z threshold", TAIL_STEP=0.0)
    return out


def river_candidates() -> dict:
    """river's streaming detectors, when river is installed (uv run --with river ...)."""
    try:
        from river import anomaly, compose, preprocessing
    except ImportError:
        print("  (river not installed: its candidates are skipped)")
        return {}

    def half_space_trees(timestamps, values):
        model = compose.Pipeline(
            preprocessing.MinMaxScaler(),
            anomaly.HalfSpaceTrees(n_trees=10, height=8, window_size=250, seed=42),
        )
        out = []
        for v in values.tolist():
            out.append(model.score_one({"x": v}))
            model.learn_one({"x": v})
        return out

    def standard_absolute_deviation(timestamps, values):
        model = anomaly.StandardAbsoluteDeviation()
        out = []
        for v in values.tolist():
            z = model.score_one(None, v)
            out.append(z / (1.0 + z))
            model.learn_one(None, v)
        return out

    return {
        "river HalfSpaceTrees": half_space_trees,
        "river StandardAbsoluteDeviation": standard_absolute_deviation,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--candidates", action="store_true", help="also measure the candidates")
    ap.add_argument("--per-file", action="store_true", help="print the per-file breakdown")
    ap.add_argument("--jobs", type=int, default=0, help="processes (default: all cores)")
    args = ap.parse_args(argv)
    if not (TOOLS / "nabscore.py").is_file():
        raise SystemExit(f"NAB scorer not found beside the repository ({TOOLS})")

    labels = DATA / "labels" / "combined_windows.json"
    files = nabscore.load_corpus(str(DATA), str(labels))
    print(f"NAB: {len(files)} files from {os.path.relpath(DATA, ROOT)}", flush=True)
    full = nabscore.run_detector(nab_detector.score_series, files, args.jobs)
    problems = nabscore.check_causal(nab_detector.score_series, files, full)
    result = nabscore.score_corpus(full, files)
    print(nabscore.format_result(result, "default detector"))
    print(nabscore.format_scoreboard(result, "default detector"))
    if args.per_file:
        for profile, p in result["profiles"].items():
            print(f"\n{profile} per file (threshold {p['threshold']:.6g}):")
            for b in p["per_file"]:
                print(
                    f"  {b['file']:<55}{b['score']:>9.3f}  windows "
                    f"{b['windows_detected']}/{b['windows']}  fp_rows {b['fp_rows']}"
                )

    pps = points_per_second(files, nab_detector.score_series)
    print(f"\nthroughput: {pps:,} points/s in one process", flush=True)
    print(
        "in-sample / leave one group out (parameters and threshold chosen on four folders)"
        " / the same with the threshold fixed at the alarm score:"
    )
    default = evaluate("default detector", files, default_with, GRID, args.jobs)

    report = {
        "detector": get_detector().name,
        "params": get_detector().state()["params"],
        "causal": not problems,
        "causality_problems": problems,
        **{SHORT[p]: round(v["normalized"], 2) for p, v in result["profiles"].items()},
        "thresholds": {SHORT[p]: v["threshold"] for p, v in result["profiles"].items()},
        "windows_detected": result["profiles"]["standard"]["windows_detected"],
        "windows": result["n_windows"],
        "fp_rows": {SHORT[p]: v["fp_rows"] for p, v in result["profiles"].items()},
        "points_per_s": pps,
        "leave_one_group_out": default["leave_one_group_out"],
        "leave_one_group_out_at_alarm_score": default["leave_one_group_out_at_alarm_score"],
        "grid": GRID,
    }
    report["targets"] = {
        name: {"target": f">= {bound}", "value": report[name], "pass": report[name] >= bound}
        for name, bound in TARGETS.items()
    }
    if args.candidates:
        print("candidates:")
        report["candidates"] = candidates(files, args.jobs)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
