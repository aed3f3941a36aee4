"""The identity of one downstream run: upstream x label budget x subset seed.

Stage names, folder names and subset files spell the budget exactly as params and DVC do (`str()` of the
params value: 2 -> "2", 2.0 -> "2.0", 6000000 -> "6000000"); files that come out of a run name it in their
contents (`upstream`, `budget_minutes`, `seed`), which is what the report trusts.
"""

from __future__ import annotations

from dataclasses import dataclass


def budget_name(minutes: int | float | str) -> str:
    """A budget as DVC writes `${item.budget}`: the params value's `str()`."""
    return str(minutes)


@dataclass(frozen=True)
class RunKey:
    upstream: str
    budget: str  # as spelled in params and stage names
    seed: int

    @classmethod
    def of(cls, upstream: str, budget: int | float | str, seed: int) -> RunKey:
        return cls(upstream, budget_name(budget), int(seed))

    @property
    def minutes(self) -> float:
        return float(self.budget)

    @property
    def name(self) -> str:
        """`<upstream>-<budget>-<seed>`: the stage's matrix item and its output folders."""
        return f"{self.upstream}-{self.budget}-{self.seed}"

    @property
    def subset_file(self) -> str:
        return subset_file(self.budget, self.seed)

    def as_dict(self) -> dict:
        return {"upstream": self.upstream, "budget_minutes": self.minutes, "seed": self.seed}


def subset_file(budget: int | float | str, seed: int) -> str:
    return f"{budget_name(budget)}min-seed{seed}.txt"
