"""Test settings: a fixed Hypothesis profile so the suite's duration is predictable."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "hetsched", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("hetsched")
