"""The default detector: a robust baseline, a daily and weekly profile, self-calibrated surprise.

Each sample is compared with a prediction. Two predictions run side by side
and the one that explains the series better is used:

* plain: an exponentially weighted level;
* seasonal: a slower level plus an hour-of-day and a day-of-week offset, each
  learned per cycle, so the sampling interval does not change how fast they learn.

The residual divided by a robust running scale (mean absolute deviation) is the
surprise ``z``. Updates are Huber-clipped, so a spike barely moves the model,
while the scale grows under a sustained excursion, so a level shift ends up
learned instead of alarming forever. A gap counts as the samples it skipped.

A series has its own normal amount of surprise (request counts are spikier
than a CPU gauge), so ``z`` is divided by a running 99th percentile of past
surprises before it becomes a score.

A change too small for any single sample to stand out is caught by its
persistence: a short moving average of the signed, clipped surprise is
compared with that average's own long-run mean and spread (an EWMA control
chart that calibrates itself). The score is the larger of the two. Once a
sample alarms, the excursion is reported once: later scores are damped until
the series has been calm for a while (which is also how a learned new level
ends the excursion).
"""

import math

from monitoring.detectors.base import ALARM_SCORE, Detector, InvalidSample

HOUR = 3600.0
DAY = 86400.0
HUBER_K = 3.0  # residuals update the model clipped at this many scale units
MAD_TO_SIGMA = 1.2533  # mean absolute deviation -> standard deviation (normal)
WARMUP = 30  # samples learned before any score is given
QUIET = 30  # calm samples that end an excursion
SEASON_RATE = 0.3  # how far a profile entry moves towards what it saw, per cycle
SEASON_GAIN = 0.8  # the seasonal prediction must cut the scale by this factor
SEASON_MIN_SPAN = 2 * DAY  # ... and have seen two days of data
BASE_SLOWDOWN = 0.1  # the seasonal model's level follows slower than the plain one
# Its scale follows faster: the fit improves as the profile is learned, and the
# scale must show that for the seasonal model to take over and to judge by it.
SEASON_SCALE_SPEED = 5.0
MAX_GAP_STEPS = 100.0  # a longer gap counts as this many typical intervals
FLOOR = 0.01  # smallest scale, relative to the series' mean magnitude
TAIL_P = 0.99  # the surprise quantile a score is measured against
TAIL_STEP = 0.05  # its step in log units
NORMAL_TAIL = math.log(2.576)  # its start: the 99th percentile of |z| for normal noise
DAMPING = 0.25  # scores inside an excursion that has already alarmed
# Sustained shift: a short mean of the signed surprise (clipped at HUBER_K),
SHIFT_RATE = 0.2  # ... over about the last five samples,
SHIFT_MEMORY = 0.001  # ... judged by its own mean and variance over ~1000 samples,
SHIFT_SIGMAS = 4.0  # ... alarms this many of its standard deviations away,
SHIFT_WARMUP = 100  # ... once those have seen this many samples.


class RobustSeasonalDetector(Detector):
    """Robust level + seasonal profile, two-sided, one alarm per excursion.

    ``threshold``: how many times the series' usual high surprise (its running
    99th percentile) a sample must reach to score ``ALARM_SCORE``.
    ``alpha``: how fast the plain level follows the series, per typical interval.
    """

    name = "robust_seasonal"

    def __init__(self, threshold: float = 2.0, alpha: float = 0.002):
        if not (0 < threshold < math.inf and 0 < alpha < 1):
            raise ValueError("threshold must be a positive number and alpha in (0, 1)")
        self.threshold = float(threshold)
        self.alpha = float(alpha)
        self.n = 0
        self.first_t = 0.0
        self.t_last = 0.0
        self.interval = 0.0  # typical sampling interval, seconds
        self.magnitude = 0.0  # slow mean of |value|: sets the smallest scale
        self.level = 0.0  # plain model
        self.spread = 0.0
        self.base = 0.0  # seasonal model: slow level + profiles
        self.spread_s = 0.0
        self.daily = [0.0] * 24
        self.weekly = [0.0] * 7
        self.tail = 0.0  # running high quantile of log(z)
        self.shift_n = 0  # samples the sustained-shift stage has seen
        self.shift = 0.0  # short mean of the signed, clipped surprise
        self.shift_mean = 0.0  # its long-run mean and variance
        self.shift_var = 0.0
        self.sustained = False  # the last score came from the shift, not the sample
        self.alarmed = False  # inside an excursion that has alarmed
        self.calm = 0  # calm samples seen since
        self.calm_since = None  # when the current run of calm samples began
        self.expected_low = self.expected_high = self.direction = None

    def update(self, ts: float, value: float) -> float:
        x = float(value)
        t = float(ts)
        if not (math.isfinite(x) and math.isfinite(t)):
            raise InvalidSample("timestamp and value must be finite numbers")
        self.expected_low = self.expected_high = self.direction = None
        self.sustained = False
        n = self.n
        if n == 0:
            self.n = 1
            self.first_t = self.t_last = t
            self.level = self.base = x
            self.magnitude = abs(x)
            return 0.0
        dt = t - self.t_last
        if dt < 0:
            raise InvalidSample("samples must arrive in time order")
        self.t_last = t
        a, covered = self._step(dt, n)

        self.magnitude += a * BASE_SLOWDOWN * ((x if x > 0 else -x) - self.magnitude)
        floor = 1e-9 + FLOOR * self.magnitude

        # plain model
        level = self.level
        r = x - level
        sig = self.spread * MAD_TO_SIGMA
        if sig < floor:
            sig = floor
        lim = HUBER_K * sig
        self.level = level + a * (lim if r > lim else (-lim if r < -lim else r))
        ar = r if r > 0 else -r
        self.spread += a * ((ar if ar < lim else lim) - self.spread)

        # seasonal model
        hour = int((t % DAY) // HOUR)
        dow = int((t // DAY) % 7)
        pred_s = self.base + self.daily[hour] + self.weekly[dow]
        r2 = x - pred_s
        sig2 = self.spread_s * MAD_TO_SIGMA
        if sig2 < floor:
            sig2 = floor
        lim2 = HUBER_K * sig2
        rc2 = lim2 if r2 > lim2 else (-lim2 if r2 < -lim2 else r2)
        self.base += a * BASE_SLOWDOWN * rc2
        self.daily[hour] += SEASON_RATE * min(1.0, covered / HOUR) * rc2
        self.weekly[dow] += SEASON_RATE * min(1.0, covered / DAY) * rc2
        ar2 = r2 if r2 > 0 else -r2
        rate_s = a * SEASON_SCALE_SPEED
        if rate_s > 1.0:
            rate_s = 1.0
        self.spread_s += rate_s * ((ar2 if ar2 < lim2 else lim2) - self.spread_s)

        self.n = n + 1
        if sig2 < SEASON_GAIN * sig and t - self.first_t >= SEASON_MIN_SPAN:
            r, sig, ar, pred = r2, sig2, ar2, pred_s
        else:
            pred = level
        if n < WARMUP:
            return 0.0
        self.direction = "up" if r > 0 else "down"
        return self._score(r / sig, n, pred, sig, t)

    def _step(self, dt: float, n: int) -> tuple[float, float]:
        """Learning rate for this sample, and the seconds it stands for."""
        interval = self.interval
        if interval <= 0.0:
            interval = dt
        else:
            interval += 0.05 * (min(dt, 10.0 * interval) - interval)
        self.interval = interval
        steps = dt / interval if interval > 0.0 else 1.0
        if steps <= 1.0:
            steps = 1.0
        elif steps > MAX_GAP_STEPS:
            steps = MAX_GAP_STEPS
        a = self.alpha if steps == 1.0 else 1.0 - (1.0 - self.alpha) ** steps
        if a < 1.0 / (n + 1):
            a = 1.0 / (n + 1)  # warming up: a plain mean of what was seen
        return a, interval * steps

    def explain(self) -> dict:
        """Base explanation, plus whether the score came from a sustained shift."""
        return super().explain() | {"sustained": self.sustained}

    @property
    def in_excursion(self) -> bool:
        return self.alarmed

    def _score(self, zs: float, n: int, pred: float, sig: float, t: float) -> float:
        """Surprise relative to this series' usual high surprise, one alarm per excursion.

        ``zs`` is the signed surprise (residual over scale) of this sample.
        """
        z = zs if zs > 0 else -zs
        lz = math.log(z + 1e-12)
        tail = NORMAL_TAIL if n == WARMUP else self.tail
        ref = math.exp(tail)
        if ref < 1.0:
            ref = 1.0  # a series that is never surprised still needs z > threshold
        band = self.threshold * ref  # where the score reaches ALARM_SCORE, in z units
        low, high = -band, band
        self.tail = tail + (TAIL_STEP * TAIL_P if lz > tail else -TAIL_STEP * (1.0 - TAIL_P))
        ratio = z / band
        ratio *= ratio
        score = ratio / (1.0 + ratio)
        single = score  # this sample alone: is its value back in the normal range?

        # Sustained shift: the short mean against its own long-run distribution.
        u = HUBER_K if zs > HUBER_K else (-HUBER_K if zs < -HUBER_K else zs)
        m = self.shift_n
        if m == 0:
            self.shift = self.shift_mean = u
            self.shift_var = 0.0
        self.shift_n = m + 1
        kept = (1.0 - SHIFT_RATE) * self.shift
        short = kept + SHIFT_RATE * u
        self.shift = short
        mean = self.shift_mean
        d = short - mean
        if m >= SHIFT_WARMUP and self.shift_var > 0.0:
            limit = SHIFT_SIGMAS * math.sqrt(self.shift_var)
            ratio = d / limit
            ratio *= ratio
            shifted = ratio / (1.0 + ratio)
            if shifted > score:
                score = shifted
                self.sustained = True
                self.direction = "up" if d > 0 else "down"
            # The samples that keep the short mean within the limit, in z units.
            # A sample moves it at most as far as HUBER_K, where it is clipped.
            lo = (mean - limit - kept) / SHIFT_RATE
            hi = (mean + limit - kept) / SHIFT_RATE
            if hi > -HUBER_K and lo < HUBER_K:
                if lo > low and lo > -HUBER_K:
                    low = lo
                if hi < high and hi < HUBER_K:
                    high = hi
                if low > high:  # no sample keeps both scores below the alarm
                    low, high = -band, band
        rate = SHIFT_MEMORY
        if m + 1 < 1.0 / SHIFT_MEMORY:
            rate = 1.0 / (m + 1)  # warming up: a plain mean and variance
        self.shift_mean = mean + rate * d
        self.shift_var += rate * (d * d - self.shift_var)
        self.expected_low = pred + low * sig
        self.expected_high = pred + high * sig
        if self.alarmed:
            # The excursion ends after QUIET calm scores (the shift's memory included);
            # it ended, for the record, when the values themselves came back.
            if single < 0.25 * ALARM_SCORE:
                if self.calm_since is None:
                    self.calm_since = t
            else:
                self.calm_since = None
            if score < 0.25 * ALARM_SCORE:
                self.calm += 1
                if self.calm >= QUIET:
                    self.alarmed = False
            else:
                self.calm = 0
            return score * DAMPING
        if score >= ALARM_SCORE:
            self.alarmed = True
            self.calm = 0
            self.calm_since = None
        return score

    _FLOATS = (
        "first_t",
        "t_last",
        "interval",
        "magnitude",
        "level",
        "spread",
        "base",
        "spread_s",
        "tail",
    )
    _SHIFT_FLOATS = ("shift", "shift_mean", "shift_var")

    def state(self) -> dict:
        out = {
            "detector": self.name,
            "params": {"threshold": self.threshold, "alpha": self.alpha},
            "n": self.n,
            "alarmed": self.alarmed,
            "calm": self.calm,
            "calm_since": self.calm_since,
            "shift_n": self.shift_n,
            "daily": list(self.daily),
            "weekly": list(self.weekly),
        }
        out.update({key: getattr(self, key) for key in self._FLOATS + self._SHIFT_FLOATS})
        return out

    @classmethod
    def from_state(cls, state: dict) -> "RobustSeasonalDetector":
        det = cls(**state["params"])
        det.n = int(state["n"])
        det.calm = int(state["calm"])
        det.alarmed = bool(state["alarmed"])
        since = state.get("calm_since")
        det.calm_since = None if since is None else float(since)
        # A state saved before the sustained-shift stage existed starts that stage afresh.
        det.shift_n = int(state.get("shift_n", 0))
        for key in cls._SHIFT_FLOATS:
            setattr(det, key, float(state.get(key, 0.0)))
        for key in cls._FLOATS:
            setattr(det, key, float(state[key]))
        det.daily = [float(v) for v in state["daily"]]
        det.weekly = [float(v) for v in state["weekly"]]
        if len(det.daily) != 24 or len(det.weekly) != 7:
            raise ValueError("seasonal profiles must have 24 and 7 entries")
        return det
