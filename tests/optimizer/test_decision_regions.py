"""The decision rule's regions: exact on designed rules, as accurate as any depth-two partition, honest in size."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from optimizer.decision_regions import fit_regions


def grid_states() -> np.ndarray:
    """Hashprice 20, 22, ..., 48 $/PH/day against BTC 40k, 45k, ..., 115k $: 15 x 16 nodes."""
    return np.array([(h, b) for h in range(20, 50, 2) for b in range(40_000, 120_000, 5_000)], dtype=float)


def test_a_known_rule_in_both_variables_is_found_exactly():
    """True rule: convert iff hashprice <= 30.5 and BTC <= 72,500. On the grid the tightest reading is the
    midpoint of the neighbouring values: hashprice <= (30 + 32) / 2 = 31 and BTC <= (70k + 75k) / 2 = 72.5k."""
    states = grid_states()
    truth = (states[:, 0] <= 30.5) & (states[:, 1] <= 72_500)
    rule = fit_regions(states, truth)
    assert rule.accuracy == 1.0 and rule.misclassified == 0 and rule.nodes == 240
    assert [rule.converts(h, b) for h, b in states] == list(truth)  # every node's decision reproduced
    [convert] = [r for r in rule.regions if r.convert]
    assert (convert.hashprice_above, convert.hashprice_at_most) == (None, 31.0)
    assert (convert.btc_above, convert.btc_at_most) == (None, 72_500.0)
    assert (convert.converting_nodes, convert.waiting_nodes) == (6 * 7, 0)  # 20..30 by 40k..70k
    assert len(rule.regions) == 3  # the fewest boxes that express an "and" of two thresholds
    assert rule.text() == "hashprice <= 31.00 $/PH/day and BTC <= 72,500 $"
    fresh = np.random.default_rng(1).uniform((20, 40_000), (48, 115_000), size=(500, 2))
    away = (np.abs(fresh[:, 0] - 31) > 1) & (np.abs(fresh[:, 1] - 72_500) > 2_500)  # off the unobserved gap
    predicted = np.array([rule.converts(h, b) for h, b in fresh[away]])
    np.testing.assert_array_equal(predicted, (fresh[away, 0] <= 31) & (fresh[away, 1] <= 72_500))


def test_one_threshold_gives_two_regions_and_no_choice_one():
    states = grid_states()
    rule = fit_regions(states, states[:, 1] > 92_000)  # convert when BTC is high: 95k and above
    assert len(rule.regions) == 2 and rule.accuracy == 1.0
    assert rule.text() == "BTC > 92,500 $"
    waiting = fit_regions(states, np.zeros(len(states), dtype=bool))
    assert len(waiting.regions) == 1 and waiting.text() == "wait in every state seen"
    assert fit_regions(states[:3], [True, True, True]).text() == "convert in every state seen"


def test_a_node_no_box_can_isolate_costs_its_accuracy_not_a_bigger_rule():
    """One converting node in the middle of a 5 x 5 grid of waiting nodes: two splits cannot box it in (it has
    neighbours on four sides), so the best rule is "wait" and reproduces 24 of 25 nodes."""
    states = np.array([(h, b) for h in range(5) for b in range(5)], dtype=float)
    labels = [(h, b) == (2, 2) for h, b in states]
    rule = fit_regions(states, labels)
    assert rule.misclassified == 1 and rule.accuracy == pytest.approx(24 / 25)
    assert len(rule.regions) == 1 and not rule.regions[0].convert


def brute_force_errors(states: np.ndarray, labels: np.ndarray) -> int:
    """The fewest misclassified nodes over every partition by at most two levels of axis-aligned splits,
    by classifying each node directly (no prefix sums, no pruning)."""

    def leaf(mask):
        k = int(labels[mask].sum())
        return min(k, int(mask.sum()) - k)

    def thresholds(mask):
        out = []
        for v in (0, 1):
            values = np.unique(states[mask, v])
            out += [(v, (a + b) / 2) for a, b in itertools.pairwise(values)]
        return out

    def one_level(mask):
        best = leaf(mask)
        for v, t in thresholds(mask):
            left = mask & (states[:, v] <= t)
            best = min(best, leaf(left) + leaf(mask & ~left))
        return best

    everything = np.ones(len(labels), dtype=bool)
    best = leaf(everything)
    for v, t in thresholds(everything):
        left = states[:, v] <= t
        best = min(best, one_level(left) + one_level(~left))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_no_depth_two_partition_misclassifies_fewer_nodes(seed):
    rng = np.random.default_rng(seed)
    states = np.column_stack([rng.integers(20, 30, 10), rng.integers(50, 60, 10) * 1_000]).astype(float)
    labels = rng.random(10) < 0.5
    rule = fit_regions(states, labels)
    assert rule.misclassified == brute_force_errors(states, labels)
    wrong = sum(rule.converts(h, b) != label for (h, b), label in zip(states, labels, strict=True))
    assert wrong == rule.misclassified  # the regions' own classification agrees with the count reported
    assert sum(r.converting_nodes + r.waiting_nodes for r in rule.regions) == 10
