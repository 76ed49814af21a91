"""Scenario-tree work on Ray: the independent trees of the value-of-waiting interval, the fresh trees of the
rolling out-of-sample score and its re-solves at each node, as tasks (optimizer.option_value.TaskMap).

`ray_tasks(workers)` is a TaskMap that runs each task function in a Ray task (solvers.ray_pool.fan_out, at
most `workers` at once) and, under `in_process()`, here. An argument object passed to more than one task
(the fleet, the tree, the limits) goes to the object store once and every task gets its reference. The
task functions draw their paths from (seed, stream, tree and node position) alone and solve with HiGHS on
one thread, so results are the same for any number of workers, and in-process.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from optimizer.option_value import TaskMap
from solvers.ray_pool import cluster_configured, ensure_ray, fan_out, lazy_remote, put, ray_active

_SCALARS = (int, float, str, bool, type(None))  # small enough to pass by value


@lazy_remote(num_cpus=1)
def _call(fn: Callable, *args: Any) -> Any:
    """One tree task in a worker: the task function and its arguments (references resolved by Ray)."""
    return fn(*args)


def ray_tasks(workers: int | None = None) -> TaskMap:
    def run(fn: Callable, arg_lists: Sequence[tuple]) -> list:
        if not arg_lists:
            return []
        shared = _share(arg_lists)
        calls = [(fn, *(shared.get(id(a), a) for a in args)) for args in arg_lists]
        return fan_out(_call, calls, workers)

    return run


def _share(arg_lists: Sequence[tuple]) -> dict[int, Any]:
    """id -> object-store reference for each non-scalar argument object that more than one task receives."""
    uses = Counter(key for args in arg_lists for key in {id(a) for a in args if not isinstance(a, _SCALARS)})
    objects = {id(a): a for args in arg_lists for a in args}
    return {key: put(objects[key]) for key, count in uses.items() if count > 1}


def tree_task_map(workers: int | None = None, local: bool | None = None) -> tuple[TaskMap, bool]:
    """The TaskMap for a tree analysis and whether it runs in this process: on Ray when Ray is up or a cluster
    is configured (`local` None), else here, where a tree's few solves would not pay for Ray's start-up."""
    if local is None:
        local = not (ray_active() or cluster_configured())
    if not local:
        ensure_ray()
    return ray_tasks(workers), local
