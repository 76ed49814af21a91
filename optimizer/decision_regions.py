"""A decision rule in two variables: axis-aligned regions of (hashprice, BTC price) labelled convert or wait.

At a decision date the nodes of the tree saw a (hashprice, BTC price) state and either started a site's
conversion or kept waiting. The rule a planner can read is a partition of that plane into at most four
boxes, each labelled by what most of its nodes did: a classification tree of depth two on the two
variables, found by exhaustive search (every split at a midpoint between adjacent observed values, every
pair of second splits), so it is the partition of that family with the fewest misclassified nodes.

Honesty over fit: a split is kept only when it misclassifies strictly fewer nodes than not splitting, so
a date where every node waits is one box, a single threshold is two, and four boxes appear only when
both variables matter. Among equally accurate partitions the one with the widest gap at its split(s)
(relative to each variable's observed range) is chosen. The rule reports its in-sample accuracy: the
share of nodes whose action it reproduces; 1.0 means it reproduces every node's decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

VARIABLES = ("hashprice_usd_per_ph_day", "btc_price_usd")
MAX_DEPTH = 2  # at most four boxes: a rule a planner reads at a glance


@dataclass(frozen=True)
class Region:
    """hashprice in (hashprice_above, hashprice_at_most] and BTC in (btc_above, btc_at_most]; None: unbounded."""

    hashprice_above: float | None
    hashprice_at_most: float | None
    btc_above: float | None
    btc_at_most: float | None
    convert: bool
    converting_nodes: int
    waiting_nodes: int

    def contains(self, hashprice: float, btc_price: float) -> bool:
        return _within(hashprice, self.hashprice_above, self.hashprice_at_most) and _within(
            btc_price, self.btc_above, self.btc_at_most
        )

    def text(self) -> str:
        parts = [
            _bound_text("hashprice", self.hashprice_above, self.hashprice_at_most, "{:.2f} $/PH/day"),
            _bound_text("BTC", self.btc_above, self.btc_at_most, "{:,.0f} $"),
        ]
        return " and ".join(p for p in parts if p) or "any state"


@dataclass(frozen=True)
class RegionRule:
    regions: tuple[Region, ...]
    nodes: int  # nodes classified (those that converted or waited)
    misclassified: int

    @property
    def accuracy(self) -> float:
        return 1.0 - self.misclassified / self.nodes if self.nodes else 1.0

    def converts(self, hashprice: float, btc_price: float) -> bool:
        return next(r.convert for r in self.regions if r.contains(hashprice, btc_price))

    def text(self) -> str:
        converting = [r for r in self.regions if r.convert]
        if not converting:
            return "wait in every state seen"
        if len(converting) == len(self.regions):
            return "convert in every state seen"
        return " or ".join(f"({r.text()})" if len(converting) > 1 else r.text() for r in converting)


def _within(value: float, above: float | None, at_most: float | None) -> bool:
    return (above is None or value > above) and (at_most is None or value <= at_most)


def _bound_text(name: str, above: float | None, at_most: float | None, fmt: str) -> str:
    if above is not None and at_most is not None:
        return f"{fmt.format(above)} < {name} <= {fmt.format(at_most)}"
    if above is not None:
        return f"{name} > {fmt.format(above)}"
    if at_most is not None:
        return f"{name} <= {fmt.format(at_most)}"
    return ""


@dataclass(frozen=True)
class _Split:
    variable: int  # index into VARIABLES
    threshold: float  # left: value <= threshold
    margin: float  # gap between the neighbouring values, relative to the variable's range


@dataclass(frozen=True)
class _Node:
    errors: int
    leaves: int
    margin: float  # smallest relative margin of the splits below (inf: no split)
    split: _Split | None = None
    left: _Node | None = None
    right: _Node | None = None

    def key(self) -> tuple[int, int, float]:  # fewer errors, then fewer boxes, then wider margins
        return (self.errors, self.leaves, -self.margin)


def fit_regions(states: np.ndarray, converts: Sequence[bool]) -> RegionRule:
    """`states`: [n, 2] hashprice ($/PH/day) and BTC price ($) per node; `converts`: True where it converted."""
    states = np.asarray(states, dtype=float).reshape(-1, 2)
    labels = np.asarray(converts, dtype=bool)
    if len(states) != len(labels):
        raise ValueError(f"{len(states)} states but {len(labels)} labels")
    spans = np.ptp(states, axis=0) if len(states) else np.ones(2)
    spans = np.where(spans > 0, spans, 1.0)
    tree = _best(states, labels, spans, MAX_DEPTH)
    regions: list[Region] = []
    _collect(tree, states, labels, [None, None, None, None], regions)
    return RegionRule(tuple(regions), len(labels), tree.errors)


def _leaf(labels: np.ndarray) -> _Node:
    converting = int(labels.sum())
    return _Node(min(converting, len(labels) - converting), 1, np.inf)


def _best(states: np.ndarray, labels: np.ndarray, spans: np.ndarray, depth: int) -> _Node:
    best = _leaf(labels)
    if depth == 0 or best.errors == 0:
        return best
    if depth == 1:
        return _best_stump(states, labels, spans, best)
    for split in _candidate_splits(states, spans):
        left = states[:, split.variable] <= split.threshold
        a = _best(states[left], labels[left], spans, depth - 1)
        if a.errors > best.errors or (best.split is None and a.errors >= best.errors):
            continue  # the left side alone already costs more than the best so far
        b = _best(states[~left], labels[~left], spans, depth - 1)
        node = _Node(a.errors + b.errors, a.leaves + b.leaves, min(split.margin, a.margin, b.margin), split, a, b)
        if node.errors < best.errors if best.split is None else node.key() < best.key():
            best = node
    return best


def _best_stump(states: np.ndarray, labels: np.ndarray, spans: np.ndarray, leaf: _Node) -> _Node:
    """The best single split (vectorised over thresholds), or `leaf` if none misclassifies fewer nodes."""
    best = leaf
    n = len(labels)
    for variable in range(states.shape[1]):
        order = np.argsort(states[:, variable], kind="stable")
        values, sorted_labels = states[order, variable], labels[order].astype(int)
        cut = np.flatnonzero(values[1:] > values[:-1])  # split between positions cut and cut + 1
        if not len(cut):
            continue
        left_converting = np.cumsum(sorted_labels)[cut]
        left_n = cut + 1
        right_converting = int(sorted_labels.sum()) - left_converting
        right_n = n - left_n
        left_errors = np.minimum(left_converting, left_n - left_converting)
        right_errors = np.minimum(right_converting, right_n - right_converting)
        errors = left_errors + right_errors
        margins = (values[cut + 1] - values[cut]) / spans[variable]
        i = int(np.lexsort((-margins, errors))[0])  # fewest errors, then the widest margin
        if errors[i] >= leaf.errors:
            continue
        node = _Node(
            int(errors[i]),
            2,
            float(margins[i]),
            _Split(variable, float((values[cut[i]] + values[cut[i] + 1]) / 2), float(margins[i])),
            _Node(int(left_errors[i]), 1, np.inf),
            _Node(int(right_errors[i]), 1, np.inf),
        )
        if node.key() < best.key() or best.split is None:
            best = node
    return best


def _candidate_splits(states: np.ndarray, spans: np.ndarray) -> list[_Split]:
    splits = []
    for variable in range(states.shape[1]):
        values = np.unique(states[:, variable])
        for low, high in zip(values[:-1], values[1:], strict=True):
            splits.append(_Split(variable, float((low + high) / 2), float((high - low) / spans[variable])))
    return splits


def _collect(node: _Node, states: np.ndarray, labels: np.ndarray, bounds: list, out: list[Region]) -> None:
    """Boxes of the leaves below `node`; `bounds` = [hashprice_above, hashprice_at_most, btc_above, btc_at_most]."""
    if node.split is None:
        converting = int(labels.sum())
        waiting = len(labels) - converting
        out.append(Region(*bounds, convert=converting > waiting, converting_nodes=converting, waiting_nodes=waiting))
        return
    v, t = node.split.variable, node.split.threshold
    left = states[:, v] <= t
    left_bounds, right_bounds = list(bounds), list(bounds)
    left_bounds[2 * v + 1] = t
    right_bounds[2 * v] = t
    _collect(node.left, states[left], labels[left], left_bounds, out)
    _collect(node.right, states[~left], labels[~left], right_bounds, out)
