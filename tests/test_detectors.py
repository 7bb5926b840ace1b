"""Streaming detectors on synthetic series whose answer is known.

Series are built from a seeded random generator; ``alarms`` counts the times a
score crosses ALARM_SCORE from below, which is what an operator would be paged for.
"""

import json
import math
import random

import pytest

from monitoring.detectors import (
    ALARM_SCORE,
    DEFAULT_DETECTOR,
    DETECTORS,
    MAX_STATE_BYTES,
    InvalidSample,
    RobustSeasonalDetector,
    get_detector,
    restore_detector,
)

START = 1_700_006_400.0  # a Wednesday, 00:00 UTC
STEP = 300.0  # five-minute samples
DAY_STEPS = int(86400 / STEP)


def noise(n: int, seed: int = 7, mean: float = 100.0, sd: float = 1.0) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(mean, sd) for _ in range(n)]


def stamps(n: int, step: float = STEP) -> list[float]:
    return [START + i * step for i in range(n)]


def feed(detector, timestamps, values) -> list[float]:
    return [detector.update(t, v) for t, v in zip(timestamps, values, strict=True)]


def alarms(scores, start: int = 0) -> list[int]:
    """Rows where the score crosses the alarm level from below."""
    out, above = [], False
    for i, s in enumerate(scores):
        if i >= start and s >= ALARM_SCORE and not above:
            out.append(i)
        above = s >= ALARM_SCORE
    return out


def daily(n: int, amplitude: float = 20.0, seed: int = 3) -> list[float]:
    rng = random.Random(seed)
    return [
        100.0 + amplitude * math.sin(2 * math.pi * i / DAY_STEPS) + rng.gauss(0, 1)
        for i in range(n)
    ]


def test_it_stays_quiet_on_pure_noise():
    values = noise(6000)
    scores = feed(get_detector(), stamps(6000), values)
    assert alarms(scores) == []
    assert all(0.0 <= s < 1.0 for s in scores)


def test_it_flags_a_spike_once_with_its_direction_and_range():
    values = noise(3000)
    values[2000] += 15
    det = get_detector()
    scores = feed(det, stamps(2001), values[:2001])
    assert det.direction == "up"
    assert det.expected_high < values[2000]
    assert det.expected_low < 100.0 < det.expected_high
    scores += feed(det, stamps(3000)[2001:], values[2001:])
    assert alarms(scores) == [2000]


def test_it_flags_a_dip_below_the_expected_range():
    values = noise(3000)
    values[2000] -= 15
    det = get_detector()
    scores = feed(det, stamps(2001), values[:2001])
    assert scores[-1] >= ALARM_SCORE
    assert det.direction == "down"
    assert values[2000] < det.expected_low
    assert alarms(scores) == [2000]


def test_it_flags_a_drop_to_zero():
    values = noise(3000, mean=500.0, sd=10.0)
    values[2000:2100] = [0.0] * 100
    scores = feed(get_detector(), stamps(3000), values)
    assert alarms(scores)[:1] == [2000]


def test_it_reports_a_level_shift_once_then_learns_the_new_level():
    values = noise(5000)
    values[2000:] = [v + 20 for v in values[2000:]]
    values[4500] += 25  # a spike on the new level is still news
    scores = feed(get_detector(), stamps(5000), values)
    assert alarms(scores) == [2000, 4500]
    assert max(scores[3000:4500]) < ALARM_SCORE / 2


def test_it_reports_a_short_excursion_once_however_it_wobbles():
    values = noise(3000)
    rng = random.Random(11)
    for i in range(2000, 2060):  # an excursion that dips in and out of the alarm band
        values[i] += rng.choice([4.0, 12.0, 20.0])
    scores = feed(get_detector(), stamps(3000), values)
    assert alarms(scores) == [2000]


def test_it_flags_a_shift_too_small_for_any_single_sample_once():
    values = noise(4000)
    # Two standard deviations for 200 samples: no single sample stands out
    # (spikes alarm from about five), only their persistence does.
    values[2000:2200] = [v + 2.0 for v in values[2000:2200]]
    scores = feed(get_detector(), stamps(4000), values)
    found = alarms(scores)
    assert len(found) == 1 and 2000 < found[0] < 2030
    det = get_detector()
    feed(det, stamps(found[0] + 1), values[: found[0] + 1])
    assert det.explain()["sustained"] is True
    assert det.direction == "up"


def test_it_flags_a_small_sustained_dip_outside_the_range_it_reports():
    values = noise(4000)
    values[2000:2200] = [v - 2.0 for v in values[2000:2200]]
    det = get_detector()
    times = stamps(4000)
    for i in range(4000):
        score = det.update(times[i], values[i])
        if score >= ALARM_SCORE:
            break
    assert 2000 < i < 2030
    assert det.direction == "down"
    assert values[i] < det.expected_low < 100.0 < det.expected_high
    assert det.expected_low > 100.0 - 5.0  # narrower than the band for a single spike


def test_it_starts_the_shift_stage_afresh_from_a_state_saved_before_it_existed():
    values = noise(4000)
    times = stamps(4000)
    det = get_detector()
    feed(det, times[:3000], values[:3000])
    old = det.state()
    for key in ("shift_n", "shift", "shift_mean", "shift_var"):
        del old[key]
    resumed = restore_detector(json.loads(json.dumps(old)))
    assert alarms(feed(resumed, times[3000:], values[3000:])) == []


def test_it_follows_a_slow_ramp_but_flags_a_steep_one():
    slow = [v + 0.005 * i for i, v in enumerate(noise(6000))]
    assert alarms(feed(get_detector(), stamps(6000), slow)) == []
    steep = noise(3000)
    steep[2000:] = [v + 0.5 * (i + 1) for i, v in enumerate(steep[2000:])]
    found = alarms(feed(get_detector(), stamps(3000), steep))
    assert found and 2000 < found[0] < 2040


def test_it_learns_a_daily_cycle_and_stays_quiet_on_it():
    n = 12 * DAY_STEPS
    scores = feed(get_detector(), stamps(n), daily(n))
    assert alarms(scores, start=3 * DAY_STEPS) == []


def test_it_flags_a_value_normal_by_day_but_wrong_at_that_hour():
    n = 12 * DAY_STEPS
    values = daily(n)
    # Day 10 at the trough (18:00) the value sits at the day's peak for an hour:
    # inside the overall range, so only a seasonal model can tell.
    trough = 10 * DAY_STEPS + 3 * DAY_STEPS // 4
    values[trough : trough + 12] = [120.0] * 12
    scores = feed(get_detector(), stamps(n), values)
    assert alarms(scores, start=3 * DAY_STEPS) == [trough]


def test_it_treats_a_gap_as_time_passing_not_as_an_anomaly():
    times = stamps(4000)
    times[2000:] = [t + 6 * 3600 for t in times[2000:]]  # six hours without samples
    assert alarms(feed(get_detector(), times, noise(4000))) == []


def test_it_keeps_the_daily_cycle_in_step_across_a_gap():
    # Samples stop for a day and a half; the profile follows the clock, not the
    # sample count, so the cycle resumes without alarms and still catches an
    # hour that is out of place.
    n = 12 * DAY_STEPS
    values = daily(n)
    times = stamps(n)
    lost = range(6 * DAY_STEPS, 6 * DAY_STEPS + 3 * DAY_STEPS // 2)
    trough = 10 * DAY_STEPS + 3 * DAY_STEPS // 4
    values[trough : trough + 12] = [120.0] * 12
    kept = [i for i in range(n) if i not in lost]
    scores = feed(get_detector(), [times[i] for i in kept], [values[i] for i in kept])
    flagged = [kept[i] for i in alarms(scores, start=3 * DAY_STEPS)]
    assert flagged == [trough]


def test_it_handles_irregular_timestamps():
    rng = random.Random(5)
    times, t = [], START
    for _ in range(4000):
        t += rng.uniform(30.0, 600.0)
        times.append(t)
    values = noise(4000)
    values[3000] += 15
    scores = feed(get_detector(), times, values)
    assert alarms(scores) == [3000]


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_it_never_changes_a_score_when_later_data_arrives(name):
    n = 3 * DAY_STEPS
    values = daily(n)
    values[500] += 40
    full = feed(get_detector(name), stamps(n), values)
    for cut in (100, 501, 2 * DAY_STEPS):
        assert feed(get_detector(name), stamps(cut), values[:cut]) == full[:cut]


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_it_resumes_from_json_state_with_identical_scores(name):
    n = 4 * DAY_STEPS
    values = daily(n)
    values[2 * DAY_STEPS : 2 * DAY_STEPS + 20] = [200.0] * 20
    times = stamps(n)
    cut = 2 * DAY_STEPS + 5  # stop inside the excursion, after its alarm
    straight = feed(get_detector(name), times, values)
    first = get_detector(name)
    feed(first, times[:cut], values[:cut])
    resumed = restore_detector(json.loads(json.dumps(first.state())))
    assert type(resumed) is DETECTORS[name]
    assert feed(resumed, times[cut:], values[cut:]) == straight[cut:]


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_it_keeps_the_state_of_a_long_warmed_detector_small(name):
    det = get_detector(name)
    rng = random.Random(1)
    for i in range(30 * DAY_STEPS):
        det.update(START + i * STEP + rng.random(), rng.lognormvariate(3, 2) * 1e6 + i)
    assert len(det.state_json().encode()) <= MAX_STATE_BYTES


def test_it_names_its_detectors_and_refuses_unknown_ones():
    assert isinstance(get_detector(), RobustSeasonalDetector)
    assert get_detector().name == DEFAULT_DETECTOR
    assert get_detector(DEFAULT_DETECTOR, threshold=3.0).threshold == 3.0
    with pytest.raises(ValueError, match="unknown detector"):
        get_detector("nope")
    with pytest.raises(ValueError, match="bad parameters"):
        get_detector(DEFAULT_DETECTOR, window=3)
    with pytest.raises(ValueError):
        get_detector(DEFAULT_DETECTOR, alpha=2.0)
    with pytest.raises(ValueError, match="no known detector"):
        restore_detector({"detector": "nope"})
    with pytest.raises(ValueError, match="malformed"):
        restore_detector({"detector": DEFAULT_DETECTOR, "params": {}})


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_it_refuses_samples_it_cannot_use(name):
    det = get_detector(name)
    det.update(START, 1.0)
    with pytest.raises(InvalidSample):
        det.update(START + 60, math.nan)
    with pytest.raises(InvalidSample):
        det.update(START - 60, 1.0)
    assert det.update(START + 60, 1.0) == 0.0
