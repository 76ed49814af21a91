"""A scenario tree over the plan's horizon: decision dates, nodes, and the scenarios its leaves are.

Decision dates d_0 = 0 < d_1 < ... < d_{J-1} (months after the start, rounded up to a step like
every date of the plan, optimizer.timeline). A node of depth j is one history of the markets up to
d_j: the root (depth 0) is today; each node of depth j < J has `branching[j]` children, and the
child carries the path *segment* [d_j, d_{j+1}) that follows it (d_J = the horizon's end). So a
decision taken at depth j knows every segment of its ancestors (the path up to d_j) and nothing
after: that is non-anticipativity. The leaves (depth J) are the scenarios: a leaf's full path is the
concatenation of the segments from the root down, and its probability the product of the
conditional probabilities along the way (1 / K per branch for a generated tree).

Node numbering is breadth first (root 0); a node's *position* is the tuple of child indices from
the root, the only thing its random draws depend on (optimizer.tree_scenarios).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from optimizer.constants import DAYS_PER_MONTH, HOURS_PER_DAY


@dataclass(frozen=True)
class ScenarioTree:
    decision_steps: tuple[int, ...]  # [J] step of each decision date; decision_steps[0] == 0
    n_steps: int  # horizon length in steps
    parent: tuple[int, ...]  # [N] parent node, -1 for the root
    position: tuple[tuple[int, ...], ...]  # [N] child indices from the root
    probability: tuple[float, ...]  # [N] probability given the parent (1 for the root)

    def __post_init__(self) -> None:
        steps = self.decision_steps
        if not steps or steps[0] != 0 or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"decision steps must start at 0 and increase, got {steps}")
        if steps[-1] >= self.n_steps:
            raise ValueError(f"decision step {steps[-1]} is not inside the horizon of {self.n_steps} steps")
        if len(self.parent) != len(self.position) or len(self.parent) != len(self.probability):
            raise ValueError("parent, position and probability must have one entry per node")
        if self.parent[0] != -1 or any(p < 0 or p >= n for n, p in enumerate(self.parent) if n):
            raise ValueError("node 0 must be the root and every parent must come before its child")
        for node in range(len(self.parent)):
            kids = self.children(node)
            if kids and not math.isclose(sum(self.probability[c] for c in kids), 1.0, abs_tol=1e-9):
                raise ValueError(
                    f"children of node {node} have probabilities summing to {sum(self.probability[c] for c in kids)}"
                )
        if any(self.depth(n) != len(self.decision_steps) for n in self.leaves):
            raise ValueError(
                f"every leaf must lie at depth {len(self.decision_steps)} (one branching per decision date)"
            )

    @property
    def n_nodes(self) -> int:
        return len(self.parent)

    @property
    def n_stages(self) -> int:
        """Decision dates J; leaves lie at depth J."""
        return len(self.decision_steps)

    def depth(self, node: int) -> int:
        return len(self.position[node])

    def children(self, node: int) -> list[int]:
        return [n for n, p in enumerate(self.parent) if p == node]

    @property
    def leaves(self) -> list[int]:
        has_child = set(self.parent)
        return [n for n in range(self.n_nodes) if n not in has_child]

    @property
    def n_leaves(self) -> int:
        return len(self.leaves)

    def path(self, node: int) -> list[int]:
        """Nodes from the root down to `node`, both included."""
        out = [node]
        while self.parent[out[-1]] >= 0:
            out.append(self.parent[out[-1]])
        return out[::-1]

    def ancestor_at_depth(self, node: int, depth: int) -> int:
        return self.path(node)[depth]

    def segment(self, node: int) -> tuple[int, int]:
        """[first, stop) steps of the path the node carries; the root carries none."""
        j = self.depth(node)
        if j == 0:
            return (0, 0)
        stop = self.decision_steps[j] if j < self.n_stages else self.n_steps
        return (self.decision_steps[j - 1], stop)

    def node_probability(self) -> np.ndarray:
        """[N] unconditional probability of reaching each node."""
        out = np.ones(self.n_nodes)
        for n in range(1, self.n_nodes):
            out[n] = out[self.parent[n]] * self.probability[n]
        return out

    def leaf_probability(self) -> np.ndarray:
        """[S] probability of each scenario (leaf), in leaf order."""
        return self.node_probability()[self.leaves]

    def leaves_under(self, node: int) -> list[int]:
        """Scenario numbers (positions in `leaves`) of the leaves below `node`."""
        return [s for s, leaf in enumerate(self.leaves) if node in self.path(leaf)]

    def nodes_at_depth(self, depth: int) -> list[int]:
        return [n for n in range(self.n_nodes) if self.depth(n) == depth]

    def stage_of_step(self, step: int) -> int:
        """Depth of the last decision date at or before `step`: the node that decides what starts then."""
        return int(np.searchsorted(np.asarray(self.decision_steps), step, side="right") - 1)


def decision_steps_of(decision_months: Sequence[float], step_hours: int, n_steps: int) -> tuple[int, ...]:
    """Each decision date as the first step starting at or after it (dates are rounded like every plan date)."""
    steps = []
    for months in decision_months:
        hours = months * DAYS_PER_MONTH * HOURS_PER_DAY
        steps.append(int(min(n_steps, max(0, math.ceil(hours / step_hours - 1e-9)))))
    return tuple(steps)


def build_tree(
    decision_months: Sequence[float], branching: int | Sequence[int], step_hours: int, n_steps: int
) -> ScenarioTree:
    """A uniform tree: `branching[j]` equally likely children after decision date j (one int: the same everywhere)."""
    steps = decision_steps_of(decision_months, step_hours, n_steps)
    ks = [int(branching)] * len(steps) if isinstance(branching, int) else [int(k) for k in branching]
    if len(ks) != len(steps):
        raise ValueError(f"one branching factor per decision date: dates {list(decision_months)}, branching {ks}")
    return build_tree_from_branching(steps, ks, n_steps)


def build_tree_from_branching(decision_steps: Sequence[int], branching: Sequence[int], n_steps: int) -> ScenarioTree:
    """The uniform tree on decision steps: `branching[j]` equally likely children per node of depth j."""
    if len(branching) != len(decision_steps) or any(k < 1 for k in branching):
        raise ValueError(f"one branching factor >= 1 per decision date, got {list(branching)}")
    parent, position, probability = [-1], [()], [1.0]
    frontier = [0]
    for k in branching:
        nxt = []
        for node in frontier:
            for c in range(k):
                parent.append(node)
                position.append((*position[node], c))
                probability.append(1.0 / k)
                nxt.append(len(parent) - 1)
        frontier = nxt
    return ScenarioTree(tuple(decision_steps), n_steps, tuple(parent), tuple(position), tuple(probability))
