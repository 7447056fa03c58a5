"""Scheduling policies, registered by short name; ``--policy help`` lists them with their line."""

from __future__ import annotations

from hetsched.errors import UsageError
from hetsched.policies.base import Policy, PolicyContext
from hetsched.policies.dmda import Dmda, Dmdas
from hetsched.policies.eager import Eager
from hetsched.policies.random_choice import RandomChoice
from hetsched.policies.ws import WorkStealing

POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (Eager, RandomChoice, WorkStealing, Dmda, Dmdas)
}


def make_policy(name: str) -> Policy:
    """A fresh policy by name; a UsageError lists the valid names."""
    try:
        return POLICIES[name]()
    except KeyError:
        raise UsageError(f"unknown policy {name!r}; choose one of: {describe_policies()}") from None


def describe_policies() -> str:
    return "; ".join(f"{name}: {cls.description}" for name, cls in POLICIES.items())


__all__ = ["POLICIES", "Policy", "PolicyContext", "describe_policies", "make_policy"]
