"""Scenario trees in the scenario file format (docs/scenarios.md): users' own trees in, a plan's tree out.

A tree file is a scenario file (optimizer.scenario_io) whose rows are the tree's leaves, plus four
arrays:

- `tree_decision_steps` int [J]: the step of each decision date, 0 first, increasing;
- `tree_parent` int [N]: each node's parent, -1 for node 0 (the root), a parent before its children;
- `tree_probability` float [N]: each node's probability given its parent (siblings sum to 1);
- `tree_leaf_node` int [S]: the leaf node of each row.

Every leaf lies at depth J. The paths must agree with the tree: two rows whose leaves share the node
of depth j carry identical values (every path array, every market array) over the steps before
decision date j - what a node knows must be the same along all its paths. A violation names the
array, the rows and the first step where they part.
"""

from __future__ import annotations

import os

import numpy as np

from optimizer.scenario_io import ScenarioFileError, _read_arrays, load_scenarios, save_scenarios
from optimizer.scenarios import ScenarioSet
from optimizer.tree import ScenarioTree
from optimizer.tree_scenarios import TreeScenarios

SHARED_ARRAYS = (
    "btc_price_usd",
    "network_hashrate_ehs",
    "fees_btc_per_block",
    "subsidy_btc",
    "hashprice_usd_per_ph_day",
)


def save_tree_scenarios(path: str | os.PathLike, paths: TreeScenarios) -> None:
    """The leaves' paths and the tree, in one NPZ (exactly `path`)."""
    tree = paths.tree
    save_scenarios(path, paths.scenarios)
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays.update(
        tree_decision_steps=np.asarray(tree.decision_steps, dtype=np.int64),
        tree_parent=np.asarray(tree.parent, dtype=np.int64),
        tree_probability=np.asarray(tree.probability, dtype=float),
        tree_leaf_node=np.asarray(tree.leaves, dtype=np.int64),
    )
    with open(path, "wb") as file:
        np.savez(file, **arrays)


def load_tree_scenarios(
    path: str | os.PathLike, required_markets=None, expected_steps: int | None = None, expected_step_hours=None
) -> TreeScenarios:
    scenarios = load_scenarios(path, required_markets, expected_steps, expected_step_hours)
    arrays = _read_arrays(path)
    missing = [
        name
        for name in ("tree_decision_steps", "tree_parent", "tree_probability", "tree_leaf_node")
        if name not in arrays
    ]
    if missing:
        raise ScenarioFileError(
            missing[0], "a tree file needs tree_decision_steps, tree_parent, tree_probability and tree_leaf_node"
        )
    parent = [int(p) for p in arrays["tree_parent"].reshape(-1)]
    probability = [float(p) for p in arrays["tree_probability"].reshape(-1)]
    if len(probability) != len(parent):
        raise ScenarioFileError("tree_probability", f"{len(probability)} values for {len(parent)} nodes")
    position: list[tuple[int, ...]] = []
    seen: dict[int, int] = {}
    for node, p in enumerate(parent):
        if node == 0:
            position.append(())
            continue
        if not 0 <= p < node:
            raise ScenarioFileError("tree_parent", f"node {node} has parent {p}: parents come before their children")
        seen[p] = seen.get(p, -1) + 1
        position.append((*position[p], seen[p]))
    try:
        tree = ScenarioTree(
            tuple(int(s) for s in arrays["tree_decision_steps"].reshape(-1)),
            scenarios.n_steps,
            tuple(parent),
            tuple(position),
            tuple(probability),
        )
    except ValueError as err:
        raise ScenarioFileError("tree_parent", str(err)) from None
    leaf_node = [int(n) for n in arrays["tree_leaf_node"].reshape(-1)]
    if sorted(leaf_node) != sorted(tree.leaves) or len(leaf_node) != scenarios.n_scenarios:
        raise ScenarioFileError("tree_leaf_node", f"must list each of the {tree.n_leaves} leaves once, one per row")
    order = [leaf_node.index(leaf) for leaf in tree.leaves]  # rows in the tree's leaf order
    scenarios = _rows(scenarios, order)
    _check_shared_history(tree, scenarios)
    btc, hashprice = _observations(tree, scenarios)
    return TreeScenarios(tree, scenarios, btc, hashprice)


def _rows(scenarios: ScenarioSet, order: list[int]) -> ScenarioSet:
    from dataclasses import fields

    from optimizer.scenarios import MARKET_AXIS_FIELDS

    values = {}
    for f in fields(scenarios):
        value = getattr(scenarios, f.name)
        if isinstance(value, np.ndarray) and value.ndim >= 1:
            value = value[:, order] if f.name in MARKET_AXIS_FIELDS else value[order]
        values[f.name] = value
    values["indices"] = np.arange(len(order), dtype=np.int64)
    return ScenarioSet(**values)


def _check_shared_history(tree: ScenarioTree, scenarios: ScenarioSet) -> None:
    arrays = {name: getattr(scenarios, name) for name in SHARED_ARRAYS}
    for m, market in enumerate(scenarios.markets):
        arrays[f"power_price_usd_per_mwh__{market}"] = scenarios.power_price_usd_per_mwh[m]
        if scenarios.available_power_fraction is not None:
            arrays[f"available_power_fraction__{market}"] = scenarios.available_power_fraction[m]
        if scenarios.dr_call is not None:
            arrays[f"dr_call__{market}"] = scenarios.dr_call[m]
    for node in range(1, tree.n_nodes):
        depth = tree.depth(node)
        if depth >= tree.n_stages:
            continue
        rows = tree.leaves_under(node)
        stop = tree.decision_steps[depth]
        for name, values in arrays.items():
            history = values[rows, :stop]
            differs = np.any(history != history[0], axis=0)
            if differs.any():
                step = int(np.argmax(differs))
                raise ScenarioFileError(
                    name,
                    f"rows {rows} share tree node {node} (decision step {stop}) but differ at step {step}: "
                    "paths that share a node must share its history",
                )


def _observations(tree: ScenarioTree, scenarios: ScenarioSet) -> tuple[np.ndarray, np.ndarray]:
    from optimizer.constants import HOURS_PER_DAY

    window = max(1, 30 * HOURS_PER_DAY // scenarios.step_hours)
    btc = np.empty(tree.n_nodes)
    hashprice = np.empty(tree.n_nodes)
    for node in range(tree.n_nodes):
        row = tree.leaves_under(node)[0]
        depth = tree.depth(node)
        stop = tree.decision_steps[depth] if depth < tree.n_stages else scenarios.n_steps
        stop = max(stop, 1)
        btc[node] = scenarios.btc_price_usd[row, stop - 1] if depth else scenarios.btc_price_usd[row, 0]
        history = scenarios.hashprice_usd_per_ph_day[row, :stop]
        hashprice[node] = history[-window:].mean() if depth else scenarios.hashprice_usd_per_ph_day[row, 0]
    return btc, hashprice
