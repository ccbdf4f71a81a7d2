"""The DAG at stage level: one node per stage of the main table with its job count, an edge where a job of one
stage reads from a job of another (``aot-diffusion dag --stages``). Snakemake's ``--rulegraph`` has one node per
job here (its rules are the jobs), which is the wrong level for an overview.

Written as Graphviz DOT (render it with ``dot -Tsvg`` where Graphviz is installed) and as a PNG drawn with
matplotlib in layers (each stage one layer below the deepest stage it reads from), so no Graphviz is needed.
"""

from __future__ import annotations

from pathlib import Path

from . import dag


def stage_graph(plan: dag.Plan) -> tuple[dict, set]:
    """({stage: job count}, {(upstream stage, stage)}) of the main stage table under the plan's parameters."""
    counts, edges = {}, set()
    for st in dag.STAGES:
        keys = dag.keys_of(st, plan.ctx)
        counts[st.name] = len(keys)
        for key in keys:
            edges |= {(up.name, st.name) for up, _ in plan.upstream(st, key) if up.name != st.name}
    return counts, edges


def to_dot(counts: dict, edges: set, title: str) -> str:
    lines = [f'digraph "{title}" {{', "  rankdir=TB;", '  node [shape=box, style=rounded, fontname="Helvetica"];']
    lines += [f'  {name} [label="{name}\\n{n} job{"s" if n != 1 else ""}"];' for name, n in counts.items()]
    lines += [f"  {a} -> {b};" for a, b in sorted(edges)]
    return "\n".join(lines) + "\n}\n"


def layers(counts: dict, edges: set) -> dict:
    """Each stage's depth: 0 for a stage that reads no other, else one below its deepest upstream stage."""
    depth: dict = {}

    def of(name):
        if name not in depth:
            depth[name] = 1 + max((of(a) for a, b in edges if b == name), default=-1)
        return depth[name]

    for name in counts:
        of(name)
    return depth


def draw_png(counts: dict, edges: set, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .utils import AtomicPath

    depth = layers(counts, edges)
    rows: dict = {}
    for name in counts:
        rows.setdefault(depth[name], []).append(name)
    width = max(len(r) for r in rows.values())
    pos = {name: ((i + 0.5) * width / len(row), -d) for d, row in rows.items() for i, name in enumerate(row)}
    fig, ax = plt.subplots(figsize=(2.4 * width, 1.1 * len(rows) + 0.6))
    for a, b in edges:
        ax.annotate("", xy=pos[b], xytext=pos[a], arrowprops=dict(arrowstyle="->", color="0.55", lw=0.8,
                                                                  shrinkA=14, shrinkB=14))
    for name, (x, y) in pos.items():
        n = counts[name]
        ax.text(x, y, f"{name}\n{n} job{'s' if n != 1 else ''}", ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round,pad=0.4", fc="white", ec="0.3"))
    ax.set_xlim(0, width)
    ax.set_ylim(-max(rows) - 0.6, 0.6)
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    with AtomicPath(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)


def write_stage_graph(plan: dag.Plan, out_prefix: Path) -> list[Path]:
    """``<prefix>.dot`` and ``<prefix>.png``; returns both paths."""
    from .utils import atomic_write_text

    counts, edges = stage_graph(plan)
    title = f"profile {plan.p['profile']}: {len(counts)} stages, {sum(counts.values())} jobs"
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    dot, png = out_prefix.with_suffix(".dot"), out_prefix.with_suffix(".png")
    atomic_write_text(dot, to_dot(counts, edges, title))
    draw_png(counts, edges, png, title)
    return [dot, png]
