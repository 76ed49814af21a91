"""A run's economics left where they were computed, batch by batch: the driver holds references and sizes.

At fleet scale the economics outgrow one process (1,000 rack groups over a quarter: ~0.7 GB per 1,000
scenarios, so ~7 GB at 10,000). `compute_economics(..., as_batches=True)` keeps each batch's economics
in the Ray object store as its task returned it, and fetches only a small summary per batch (its
scenario count, coupled levels and sizes); the decomposition (solvers/decomposition.py) prepares
each batch from its own reference. In-process the "references" are the batches themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from optimizer.economics import NO_SITE, GroupEconomics, concat_economics
from optimizer.fleet import Fleet
from solvers.ray_pool import fan_out, get, lazy_remote, put


@dataclass(frozen=True)
class BatchSummary:
    """What the driver needs of a batch without its arrays."""

    n_scenarios: int
    first_step: int  # economics.steps[0]: the plan grid the batch was computed on
    coupled: int  # (site, scenario, step) coupled slots
    items: int  # candidate racks in coupled slots
    levels: tuple  # (site, cap kW, period) shedding levels (solvers.decomposition.coupled_levels)


def summarize(fleet: Fleet, economics: GroupEconomics) -> BatchSummary:
    from solvers.decomposition import coupled_levels

    return BatchSummary(
        n_scenarios=economics.n_scenarios,
        first_step=int(economics.steps[0]) if len(economics.steps) else -1,
        coupled=economics.n_coupled,
        items=int((economics.item_slot != NO_SITE).sum()),
        levels=tuple(coupled_levels(fleet, economics)),
    )


@lazy_remote(num_cpus=1)
def _summary_task(fleet: Fleet, economics: GroupEconomics) -> BatchSummary:
    return summarize(fleet, economics)


@lazy_remote(num_cpus=1)
def _report_sums_task(fleet: Fleet, economics: GroupEconomics, allocation):
    from optimizer.report_sums import scenario_sums

    return scenario_sums(fleet, economics, allocation)


@dataclass(frozen=True)
class EconomicsBatches:
    """Per-batch economics by reference (Ray) or value (in-process), with their summaries, in scenario order."""

    refs: tuple
    summaries: tuple[BatchSummary, ...]

    @classmethod
    def from_refs(cls, fleet: Fleet, refs: list, workers: int | None = None) -> EconomicsBatches:
        fleet_ref = put(fleet)
        return cls(tuple(refs), tuple(fan_out(_summary_task, [(fleet_ref, ref) for ref in refs], workers)))

    @classmethod
    def split(cls, fleet: Fleet, economics: GroupEconomics, batch_size: int) -> EconomicsBatches:
        """Whole economics cut into batches, each put in the object store once."""
        from solvers.ray_pool import batches

        parts = [economics.columns(np.arange(r.start, r.stop)) for r in batches(economics.n_scenarios, batch_size)]
        return cls(tuple(put(p) for p in parts), tuple(summarize(fleet, p) for p in parts))

    @property
    def n_scenarios(self) -> int:
        return sum(s.n_scenarios for s in self.summaries)

    @property
    def n_coupled(self) -> int:
        return sum(s.coupled for s in self.summaries)

    @property
    def n_items(self) -> int:
        return sum(s.items for s in self.summaries)

    @property
    def steps(self) -> np.ndarray:
        """What optimizer.economics.economics_grid reads: the first step."""
        return np.array([self.summaries[0].first_step] if self.summaries else [], dtype=np.int64)

    @property
    def levels(self) -> list:
        return sorted({level for s in self.summaries for level in s.levels})

    def starts(self) -> list[int]:
        return np.concatenate(([0], np.cumsum([s.n_scenarios for s in self.summaries])))[:-1].astype(int).tolist()

    def report_sums(self, fleet: Fleet, allocation, workers: int | None = None):
        """The plan report's sums over every scenario (optimizer.report_sums): one task per batch sums its
        own scenarios where they live, the driver adds the sums in batch order."""
        from optimizer.report_sums import sum_batches

        fleet_ref, allocation_ref = put(fleet), put(allocation)
        return sum_batches(fan_out(_report_sums_task, [(fleet_ref, ref, allocation_ref) for ref in self.refs], workers))

    def gather(self) -> GroupEconomics:
        """Every scenario in this process: only for callers that need them all at once."""
        return concat_economics([get(ref) for ref in self.refs])


def n_items(economics: GroupEconomics | EconomicsBatches) -> int:
    """Candidate racks in coupled slots, over every scenario."""
    if isinstance(economics, EconomicsBatches):
        return economics.n_items
    return int((economics.item_slot != NO_SITE).sum())
