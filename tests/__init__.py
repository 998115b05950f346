"""fedlib's trial suite.

Hypothesis runs under a profile without per-example deadlines or the "too slow"
health checks: CI and development machines are shared 2-core boxes where
timing varies several-fold, and speed is measured by ``benchmarks/``, never by
tests. Every property keeps its assertions and example counts.
"""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "fedlib",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("fedlib")
