"""Benchmark-only settings: the service's own, plus the floor endpoint of ``scale.py --clients``.

Never shipped: the floor endpoint lives only in ``scale_floor_urls``, which only this settings
module (on ``benchmarks/`` in ``PYTHONPATH``) names as the URLconf.
"""

from fma_service.settings import *  # noqa: F403 (the service's settings, unchanged but the URLconf)

ROOT_URLCONF = "scale_floor_urls"
# the floor takes the bodies the one-request push takes
FMA_BODY_LIMITS = {**FMA_BODY_LIMITS, "bench-floor": FMA_MAX_UPDATE_BYTES}  # noqa: F405
