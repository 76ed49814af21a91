"""Charts of a scenario-tree plan for report.html: the tree with each node's decisions, and per AI site
the decision rule (each decision node's hashprice and BTC price at its date, by what it did)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from optimizer.tree_report import TreeReport

ACTION_STYLE = {  # action -> (colour, marker)
    "convert": ("#d62728", "o"),
    "wait": ("#1f77b4", "s"),
    "converted": ("#999999", "^"),
    "closed": ("#cccccc", "x"),
}


def _figure(size: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size, dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _label(node) -> str:
    parts = [f"#{node.node}"]
    for site, k in node.conversions.items():
        parts.append(f"convert {site}@{k}")
    for count in node.lifecycles:
        if not count.lifecycle.startswith("ai@"):
            parts.append(f"{count.group} {count.lifecycle} {count.racks}")
    for key, mw in node.lease_mw.items():
        parts.append(f"lease {key} {mw:.1f} MW")
    for lot, racks in node.purchases.items():
        parts.append(f"buy {lot} {racks}")
    return "\n".join(parts)


def tree_chart(path: Path, report: TreeReport) -> None:
    """Nodes by decision date (x) and leaf order (y); each decision node labelled with what it decides."""
    decision_nodes = [n for n in report.tree if n.decision_month is not None]
    leaves = [n for n in report.tree if n.decision_month is None]
    y: dict[int, float] = {leaf.node: float(i) for i, leaf in enumerate(leaves)}
    for node in sorted(decision_nodes, key=lambda n: -n.depth):  # a node sits at the middle of its children
        kids = [y[c.node] for c in report.tree if c.parent == node.node]
        y[node.node] = sum(kids) / len(kids)
    months = report.decision_months
    x = {
        n.node: (months[n.depth] if n.depth < len(months) else months[-1] + max(6.0, months[-1] / 2))
        for n in report.tree
    }
    height = max(4.0, 0.35 * len(leaves) + 1.5)
    fig = _figure((12, min(height, 30)))
    ax = fig.subplots()
    for n in report.tree:
        if n.parent >= 0:
            ax.plot([x[n.parent], x[n.node]], [y[n.parent], y[n.node]], color="#bbbbbb", linewidth=0.8, zorder=1)
    for n in decision_nodes:
        converts = bool(n.conversions)
        ax.scatter([x[n.node]], [y[n.node]], s=40, zorder=2, color="#d62728" if converts else "#1f77b4")
        if len(decision_nodes) <= 40:
            ax.annotate(_label(n), (x[n.node], y[n.node]), fontsize=6, xytext=(4, 2), textcoords="offset points")
    ax.scatter([x[leaf.node] for leaf in leaves], [y[leaf.node] for leaf in leaves], s=8, color="#555555", zorder=2)
    ax.set_xticks(months)
    ax.set_xlabel("decision date, months after the start (red: a conversion starts at the node)")
    ax.set_yticks([])
    ax.set_title(f"Scenario tree: {report.nodes} nodes, {report.scenarios} scenarios; decisions per node")
    fig.tight_layout()
    fig.savefig(path)


def decision_rule_chart(path: Path, report: TreeReport, site: str) -> None:
    """One panel per decision date: hashprice (x) against BTC price (y) at each node, marked by its action, with
    the rule's convert regions shaded and every region's edge drawn."""
    rules = [r for r in report.decision_rules if r.site == site]
    fig = _figure((4.2 * len(rules) + 0.5, 4.0))
    axes = fig.subplots(1, len(rules), squeeze=False)[0]
    for ax, rule in zip(axes, rules, strict=True):
        for action, (color, marker) in ACTION_STYLE.items():
            points = [p for p in rule.points if p.action == action]
            if points:
                ax.scatter(
                    [p.hashprice_usd_per_ph_day for p in points],
                    [p.btc_price_usd / 1e3 for p in points],
                    color=color,
                    marker=marker,
                    label=action,
                    zorder=3,
                )
        _draw_regions(ax, rule)
        ax.set_title(f"month {rule.decision_month:g}: rule reproduces {rule.in_sample_accuracy:.0%}", fontsize=9)
        ax.set_xlabel("hashprice, $/PH/day (30-day mean)")
        ax.set_ylabel("BTC price, $k")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Decision rule, site {site}: convert (shaded) or wait at each date", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def _draw_regions(ax, rule) -> None:
    """Shade the convert regions and draw each region's finite edges, clipped to the panel (unbounded sides
    reach its edge)."""
    if len(rule.regions) < 2:
        return  # one region: every node does the same, nothing to draw
    ax.margins(0.15)
    ax.autoscale_view()
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    line = dict(color="#d62728", linestyle="--", linewidth=1, zorder=2)
    for region in rule.regions:
        left, right = region.hashprice_above_usd_per_ph_day, region.hashprice_at_most_usd_per_ph_day
        low, high = (None if v is None else v / 1e3 for v in (region.btc_above_usd, region.btc_at_most_usd))
        xa, xb = x0 if left is None else left, x1 if right is None else right
        ya, yb = y0 if low is None else low, y1 if high is None else high
        if region.action == "convert":
            color = ACTION_STYLE["convert"][0]
            ax.add_patch(Rectangle((xa, ya), xb - xa, yb - ya, color=color, alpha=0.15, zorder=1))
        for x in (left, right):
            if x is not None:
                ax.plot([x, x], [ya, yb], **line)
        for y in (low, high):
            if y is not None:
                ax.plot([xa, xb], [y, y], **line)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)


def tree_charts(out_dir: Path, report: TreeReport) -> dict[str, Path]:
    charts = {"tree": out_dir / "scenario_tree.png"}
    tree_chart(charts["tree"], report)
    for site in sorted({r.site for r in report.decision_rules}):
        charts[f"rule_{site}"] = out_dir / f"decision_rule_{site}.png"
        decision_rule_chart(charts[f"rule_{site}"], report, site)
    return charts
