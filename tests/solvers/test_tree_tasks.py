"""Tree work on Ray: independent trees and rolling re-solves as tasks, the same for any number of workers."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.fleet import parse_fleet
from optimizer.option_value import run_here, value_of_waiting
from optimizer.rolling import evaluate_rolling_trees
from solvers.ray_pool import in_process
from solvers.tree_tasks import _share, ray_tasks
from tests.optimizer.test_multistage import waiting_fleet_data


def analysis(fleet, run_tasks):
    """Value of waiting (wait-and-see leaves in batches) over two independent trees, the rolling policy on two
    fresh trees."""
    result = value_of_waiting(fleet, [0, 6], 3, replications=2, wait_and_see=True, run_tasks=run_tasks)
    study = evaluate_rolling_trees(fleet, result.in_sample, fleet.scenarios.seed, 2, run_tasks=run_tasks)
    return result, study


def fingerprint(result, study) -> tuple:
    return (
        [(r.stream, r.multistage_usd, r.now_or_never_usd) for r in result.replications],
        result.in_sample.wait_and_see_usd,
        [e.decisions for e in study.evaluations],
        [[s.profits_usd.tolist() for s in e.scores] for e in study.evaluations],
        study.value_of_waiting.values_usd,
    )


@pytest.fixture(scope="module")
def fleet():
    data = waiting_fleet_data(55.0)
    data["scenarios"] = {"seed": 3, "count": 3}
    return parse_fleet(data)


def test_the_same_for_one_and_two_ray_workers_and_in_process(ray_session, fleet, monkeypatch):
    whole = value_of_waiting(fleet, [0, 6], 3, replications=0).in_sample  # the nine leaves in one batch
    monkeypatch.setattr("optimizer.option_value.WAIT_AND_SEE_LEAVES", 4)  # three wait-and-see tasks: 4, 4, 1 leaves
    here = fingerprint(*analysis(fleet, run_here))
    one = fingerprint(*analysis(fleet, ray_tasks(workers=1)))
    two = fingerprint(*analysis(fleet, ray_tasks(workers=2)))
    assert one == here and two == here
    with in_process():  # the Ray TaskMap under in_process() runs the same functions here
        assert fingerprint(*analysis(fleet, ray_tasks(workers=2))) == here
    replications, wait_and_see, decisions, _, differences = here
    assert wait_and_see == whole.wait_and_see_usd >= whole.multistage_usd
    assert len(replications) == 2 and replications[0][0] != replications[1][0]  # streams 2 and 3
    assert len(decisions) == 2 and set(decisions[0]) == {0, 1, 2, 3}
    assert np.isfinite(differences).all()


def test_an_argument_shared_by_tasks_goes_to_the_object_store_once(ray_session):
    import ray

    fleet_like, tree_like, own = {"big": np.zeros(10)}, [1, 2], [3]
    shared = _share([(fleet_like, tree_like, 1, own), (fleet_like, tree_like, 2, [4])])
    assert set(shared) == {id(fleet_like), id(tree_like)}  # not the scalars, not an object one task holds
    assert ray.get(shared[id(tree_like)]) == [1, 2]
    with in_process():
        assert _share([(fleet_like,), (fleet_like,)])[id(fleet_like)] is fleet_like
