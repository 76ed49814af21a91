"""What a scenario-tree plan reports (plan.json `tree`, tree CSVs): decisions per node, the value of
waiting with its interval, the decision rule, model sizes and times. Pydantic only; `tree_report`
builds it from optimizer.option_value's results."""

from __future__ import annotations

from pydantic import BaseModel


class LifecycleCount(BaseModel):
    group: str
    lifecycle: str  # optimizer.lifecycles key: sell, idle, move:SITE, ai@K:FATE, mine, sell@mM, idle:restart@mM...
    racks: int


class ModelSizeRow(BaseModel):
    model: str  # "multistage" or "now_or_never"
    nodes: int
    scenarios: int
    variables: int
    integer_variables: int
    constraints: int


def lifecycle_rows(lifecycles: dict[str, dict[str, int]]) -> list[LifecycleCount]:
    return [
        LifecycleCount(group=g, lifecycle=k, racks=n) for g, counts in lifecycles.items() for k, n in counts.items()
    ]


class TreeNodeResult(BaseModel):
    node: int
    parent: int  # -1: the root
    depth: int
    decision_month: float | None  # None for leaves (no decision left)
    probability: float  # of reaching the node
    btc_price_usd: float  # at the node's date
    hashprice_usd_per_ph_day: float  # 30-day mean before the node's date
    lifecycles: list[LifecycleCount]  # racks put on each lifecycle at this node
    conversions: dict[str, int]  # site -> start option started at this node
    lease_mw: dict[str, float]  # "offer@site" -> MW leased on a hall started here
    purchases: dict[str, int] = {}  # purchase lot ("option" today, "option@mM" later) -> racks ordered here


class RuleRow(BaseModel):
    node: int
    hashprice_usd_per_ph_day: float
    btc_price_usd: float
    action: str  # optimizer.option_value.ConversionAction value


class RuleRegion(BaseModel):
    """hashprice in (hashprice_above, hashprice_at_most], BTC in (btc_above, btc_at_most]; None: unbounded."""

    hashprice_above_usd_per_ph_day: float | None
    hashprice_at_most_usd_per_ph_day: float | None
    btc_above_usd: float | None
    btc_at_most_usd: float | None
    action: str  # "convert" or "wait"
    converting_nodes: int
    waiting_nodes: int
    text: str


class DecisionRuleResult(BaseModel):
    decision_month: float
    site: str
    rule: str
    regions: list[RuleRegion]  # optimizer.decision_regions: a partition of the plane, convert or wait
    classified_nodes: int  # nodes that converted or waited (the others had no choice)
    in_sample_accuracy: float  # share of those nodes whose action the regions reproduce
    points: list[RuleRow]


class ValueInterval(BaseModel):
    estimate_usd: float
    lower_usd: float | None  # None: fewer than two independent trees
    upper_usd: float | None
    confidence_level: float
    replications_usd: list[float]


class PolicyResult(BaseModel):
    policy: str
    objective_usd: float  # mean over the fresh trees
    mean_usd: float
    objective: ValueInterval  # over the fresh trees


class TreeReport(BaseModel):
    decision_months: list[float]
    branching: list[int]
    seed: int
    nodes: int
    scenarios: int
    multistage_usd: float  # the fleet's risk objective, in-sample tree
    now_or_never_usd: float
    wait_and_see_usd: float | None
    value_of_waiting_in_sample_usd: float
    value_of_waiting: ValueInterval  # over independent trees
    now: TreeNodeResult  # the root: what to do today
    now_or_never_lifecycles: list[LifecycleCount]
    now_or_never_conversions: dict[str, int]
    tree: list[TreeNodeResult]
    decision_rules: list[DecisionRuleResult]
    out_of_sample: list[PolicyResult] = []  # the rolling policy, now-or-never and the calculator on fresh trees
    out_of_sample_trees: int = 0
    out_of_sample_value_of_waiting_usd: float | None = None  # rolling - now-or-never, mean over the fresh trees
    out_of_sample_value_of_waiting: ValueInterval | None = None
    out_of_sample_gain_over_calculator: ValueInterval | None = None  # rolling - calculator
    model_sizes: list[ModelSizeRow]  # the multi-stage and now-or-never models on the in-sample tree
    timings_s: dict[str, float]


def tree_report(fleet, decision_months: list[float], branching: list[int], result, rolling=None) -> TreeReport:
    """From optimizer.option_value.WaitingValue (and optimizer.rolling.RollingEvaluation when scored)."""
    import dataclasses

    from optimizer.option_value import decision_rules

    solution = result.in_sample
    tree, paths = solution.tree, solution.paths
    decided = {n.node: n for n in solution.plan.nodes}
    probability = tree.node_probability()
    nodes = []
    for n in range(tree.n_nodes):
        d = decided.get(n)
        depth = tree.depth(n)
        nodes.append(
            TreeNodeResult(
                node=n,
                parent=tree.parent[n],
                depth=depth,
                decision_month=float(decision_months[depth]) if depth < tree.n_stages else None,
                probability=float(probability[n]),
                btc_price_usd=float(paths.node_btc_price_usd[n]),
                hashprice_usd_per_ph_day=float(paths.node_hashprice_usd_per_ph_day[n]),
                lifecycles=lifecycle_rows(d.lifecycles) if d else [],
                conversions=d.conversion_start if d else {},
                lease_mw={f"{o}@{s}": mw for (o, s), mw in d.lease_mw.items()} if d else {},
                purchases=dict(d.purchases) if d else {},
            )
        )
    rules = [
        DecisionRuleResult(
            decision_month=r.decision_month,
            site=r.site,
            rule=r.text(),
            regions=[_region(region) for region in r.regions.regions],
            classified_nodes=r.regions.nodes,
            in_sample_accuracy=r.regions.accuracy,
            points=[
                RuleRow(
                    node=p.node,
                    hashprice_usd_per_ph_day=p.hashprice_usd_per_ph_day,
                    btc_price_usd=p.btc_price_usd,
                    action=p.action.value,
                )
                for p in r.points
            ],
        )
        for r in decision_rules(fleet, solution, decision_months)
    ]
    now_plan = solution.now_plan
    timings = dict(solution.timings_s)
    timings["replications"] = sum(sum(r.timings_s.values()) for r in result.replications)  # task time, summed
    timings["replications_wall"] = result.replications_wall_s
    if rolling is not None:
        timings["rolling_out_of_sample"] = rolling.wall_s
    return TreeReport(
        decision_months=[float(m) for m in decision_months],
        branching=[int(k) for k in branching],
        seed=fleet.scenarios.seed,
        nodes=tree.n_nodes,
        scenarios=tree.n_leaves,
        multistage_usd=solution.multistage_usd,
        now_or_never_usd=solution.now_or_never_usd,
        wait_and_see_usd=solution.wait_and_see_usd,
        value_of_waiting_in_sample_usd=solution.value_of_waiting_usd,
        value_of_waiting=value_interval(result.value_of_waiting),
        now=nodes[0],
        now_or_never_lifecycles=lifecycle_rows(now_plan.lifecycle_counts(fleet)),
        now_or_never_conversions=dict(now_plan.conversion_start),
        tree=nodes,
        decision_rules=rules,
        **_out_of_sample(rolling),
        model_sizes=[
            ModelSizeRow(model="multistage", **dataclasses.asdict(solution.multistage_size)),
            ModelSizeRow(model="now_or_never", **dataclasses.asdict(solution.now_or_never_size)),
        ],
        timings_s=timings,
    )


def value_interval(interval) -> ValueInterval:
    """From optimizer.option_value.Interval (no bounds: fewer than two trees)."""
    return ValueInterval(
        estimate_usd=interval.estimate_usd,
        lower_usd=interval.lower_usd,
        upper_usd=interval.upper_usd,
        confidence_level=interval.confidence_level,
        replications_usd=list(interval.values_usd),
    )


def _region(region) -> RuleRegion:
    return RuleRegion(
        hashprice_above_usd_per_ph_day=region.hashprice_above,
        hashprice_at_most_usd_per_ph_day=region.hashprice_at_most,
        btc_above_usd=region.btc_above,
        btc_at_most_usd=region.btc_at_most,
        action="convert" if region.convert else "wait",
        converting_nodes=region.converting_nodes,
        waiting_nodes=region.waiting_nodes,
        text=region.text(),
    )


def _out_of_sample(study) -> dict:
    """TreeReport's out-of-sample fields from optimizer.rolling.RollingStudy (empty when not scored)."""
    if study is None:
        return {}
    policies = []
    for policy, interval in study.objectives.items():
        means = [e.score(policy).mean_usd for e in study.evaluations]
        policies.append(
            PolicyResult(
                policy=policy,
                objective_usd=interval.estimate_usd,
                mean_usd=sum(means) / len(means),
                objective=value_interval(interval),
            )
        )
    return {
        "out_of_sample": policies,
        "out_of_sample_trees": len(study.evaluations),
        "out_of_sample_value_of_waiting_usd": study.value_of_waiting.estimate_usd,
        "out_of_sample_value_of_waiting": value_interval(study.value_of_waiting),
        "out_of_sample_gain_over_calculator": value_interval(study.gain_over_calculator),
    }


def tree_tables(report: TreeReport) -> dict[str, list[dict]]:
    """tree_nodes.csv (a row per node: what it saw and decided), decision_rule.csv (a row per node per rule) and
    decision_regions.csv (a row per region of each rule: its bounds, blank when unbounded, and its action)."""

    def text(mapping: dict) -> str:
        return "; ".join(
            f"{k}:" + ",".join(f"{kk}={vv}" for kk, vv in v.items()) if isinstance(v, dict) else f"{k}={v}"
            for k, v in mapping.items()
        )

    nodes = [
        {
            "node": n.node,
            "parent": n.parent,
            "depth": n.depth,
            "decision_month": "" if n.decision_month is None else n.decision_month,
            "probability": n.probability,
            "btc_price_usd": n.btc_price_usd,
            "hashprice_usd_per_ph_day": n.hashprice_usd_per_ph_day,
            "lifecycles": "; ".join(f"{c.group}:{c.lifecycle}={c.racks}" for c in n.lifecycles),
            "conversions": text(n.conversions),
            "lease_mw": text(n.lease_mw),
            "purchases": text(n.purchases),
        }
        for n in report.tree
    ]
    rules = [
        {
            "decision_month": r.decision_month,
            "site": r.site,
            "node": p.node,
            "hashprice_usd_per_ph_day": p.hashprice_usd_per_ph_day,
            "btc_price_usd": p.btc_price_usd,
            "action": p.action,
            "rule": r.rule,
            "rule_accuracy": r.in_sample_accuracy,
        }
        for r in report.decision_rules
        for p in r.points
    ]
    regions = [
        {
            "decision_month": r.decision_month,
            "site": r.site,
            **{k: "" if v is None else v for k, v in g.model_dump().items()},
            "rule_accuracy": r.in_sample_accuracy,
        }
        for r in report.decision_rules
        for g in r.regions
    ]
    return {"tree_nodes": nodes, "decision_rule": rules, "decision_regions": regions}
