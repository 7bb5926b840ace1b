"""Python's garbage collector, tuned for the console's long-running worker processes.

A worker evaluates a thousand rules or a hundred remediations in a round, and each
round allocates hundreds of thousands of short-lived containers (rows, model
instances, label dicts). With the default threshold (a young collection every 700
allocations) the collector then walks the worker's whole young heap about 250
times a round, and a rule tick spends some 0.13 s of its CPU time there (measured
with ``gc.callbacks`` around 20 ticks of bench/rules.py). Reference counting frees
almost all of that garbage anyway; only cycles need the collector.

``settle`` is called once a process has loaded what it keeps for its lifetime: it
freezes that (Django, the apps and their modules stay out of every collection) and
collects the young generation less often.
"""

import gc

# Allocations (net) between two young collections; Python's default is 700.
YOUNG_THRESHOLD = 50_000


def settle() -> None:
    gc.collect()  # garbage is not frozen with the rest
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
