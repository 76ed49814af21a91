"""The scenario tree through the gRPC contract: Fleet.tree in, Plan.tree out, job progress per tree stage."""

import pytest

from optimizer.fleet import parse_fleet
from protos.hashpivot.v1 import jobs_pb2
from protos.hashpivot.v1 import planner_service_pb2 as pb
from services import convert
from solvers.tree_plan import plan_tree
from tests.optimizer.test_multistage import waiting_fleet_data
from tests.services.grpc_harness import ServerThread, fleet_message


@pytest.fixture(scope="module")
def stub(ray_session, tmp_path_factory):
    with ServerThread(tmp_path_factory.mktemp("grpc-tree") / "hashpivot.sqlite") as server:
        channel = server.channel()
        yield server.stub(channel)
        channel.close()


def tree_fleet_data() -> dict:
    data = waiting_fleet_data(55.0)
    data["scenarios"] = {"seed": 3, "count": 3, "batch_size": 3}
    data["tree"] = {"decision_months": [0, 6], "branching": [3], "replications": 2}
    return parse_fleet(data).model_dump(mode="json")  # the contract has the horizon in days


def without_timings(report):
    return report.model_copy(update={"timings_s": {}})


def test_optimize_returns_the_tree_report_the_library_makes(stub):
    data = tree_fleet_data()
    plan = stub.Optimize(pb.OptimizeRequest(fleet=fleet_message(data)), timeout=300).plan
    assert plan.HasField("tree") and plan.tree.nodes == 13 and plan.tree.scenarios == 9
    received = convert.plan_from_message(plan).tree
    local = plan_tree(parse_fleet(data))
    assert without_timings(received) == without_timings(local)
    assert [p.policy for p in plan.tree.out_of_sample] == ["multi-stage (rolling)", "now-or-never", "calculator"]
    assert convert.fleet_from_message(fleet_message(data)).tree == parse_fleet(data).tree


def test_job_reports_each_tree_stage(stub):
    job = stub.SubmitPlanJob(pb.SubmitPlanJobRequest(fleet=fleet_message(tree_fleet_data())), timeout=30).job
    events = [e.job for e in stub.WatchPlanJob(pb.WatchPlanJobRequest(job_id=job.job_id), timeout=300)]
    assert events[-1].state == jobs_pb2.PLAN_JOB_STATE_SUCCEEDED
    stages = [e.progress.stage for e in events]
    assert stages.index("solve") < stages.index("tree") < stages.index("done")
    assert "tree reps" in stages and "tree oos" in stages
    final = stub.GetPlanJob(pb.GetPlanJobRequest(job_id=job.job_id), timeout=30)
    assert final.plan.tree.nodes == 13
