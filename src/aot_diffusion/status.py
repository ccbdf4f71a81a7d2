"""``aot-diffusion status``: every job of the current parameters as current, stale (and why) or missing, read
from the records both doors write (dag.Plan), so the answer is the same whichever door ran last."""

from __future__ import annotations

import json

from .dag import Plan, job_id

__all__ = ["job_states", "format_states"]

CURRENT, STALE, MISSING = "current", "stale", "missing"


def _differences(old: dict, new: dict) -> list:
    """Why a job's last record is not the current one: what it computed from that changed."""
    why = []
    params = [k for k in sorted(set(old.get("params", {})) | set(new["params"]))
              if old.get("params", {}).get(k) != new["params"].get(k)]
    if params:
        why.append("parameter " + ", ".join(params))
    old_code, new_code = old.get("code") or {}, new["code"]
    if not isinstance(old_code, dict):
        old_code = {}
    code = sorted({part.split(":")[0] for part in set(old_code) | set(new_code) if old_code.get(part) != new_code.get(part)})
    if code:
        why.append("code " + ", ".join(code))
    plugins = sorted(p for p in set(old.get("plugins", {})) | set(new.get("plugins", {}))
                     if old.get("plugins", {}).get(p) != new.get("plugins", {}).get(p))
    if plugins:
        why.append("plugin " + ", ".join(plugins))
    inputs = sorted(k for k in set(old.get("inputs", {})) | set(new.get("inputs", {}))
                    if old.get("inputs", {}).get(k) != new.get("inputs", {}).get(k))
    if inputs:
        why.append("input file " + ", ".join(str(new.get("inputs", {}).get(k, {}).get("path", k)) for k in inputs))
    upstream = sorted(j for j in set(old.get("upstream", {})) | set(new["upstream"])
                      if old.get("upstream", {}).get(j) != new["upstream"].get(j))
    if upstream:
        why.append("upstream " + ", ".join(upstream[:3]) + (f" and {len(upstream) - 3} more" if len(upstream) > 3 else ""))
    if old.get("command") != new["command"] and not why:
        why.append("command")
    return why or ["recorded by an older version of the pipeline"]


def job_states(plan: Plan) -> list:
    """One dict per job: ``job``, ``state`` (current / stale / missing) and ``why`` (a list of reasons)."""
    out = []
    for st, key in plan.jobs():
        if st.over == "released" and not plan.p["released_pickle"]:
            continue  # no released network named: those jobs are not asked for
        job = job_id(st, key)
        record = plan.read_record(st, key)
        missing = [str(p) for p in st.outs(plan.L, plan.ctx, key) if not (plan.root / p).exists()]
        if record is not None:
            edited = plan.hand_edited(st, key)
            if missing:
                state, why = MISSING, ["output " + ", ".join(missing)]
            elif edited:
                state, why = STALE, ["hand edit " + ", ".join(edited)]
            else:
                changes = plan.environment_changes(st, key)
                state, why = CURRENT, ["environment " + "; ".join(changes)] if changes else []
            out.append(dict(job=job, state=state, why=why))
            continue
        folder = plan.root / plan.L.records(job)
        old = None
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
        if old is None:
            out.append(dict(job=job, state=MISSING, why=["never run" if missing else "no record"]))
        else:
            out.append(dict(job=job, state=STALE, why=_differences(old, plan.record(st, key))))
    return out


def format_states(states: list, everything: bool = False) -> str:
    """A line per job that is not current (``everything``: every job), then the counts."""
    width = max((len(s["job"]) for s in states), default=0)
    lines = [f"{s['job']:<{width}}  {s['state']:<7}  {'; '.join(s['why'])}".rstrip()
             for s in states if everything or s["state"] != CURRENT or s["why"]]
    counts = {k: sum(s["state"] == k for s in states) for k in (CURRENT, STALE, MISSING)}
    lines.append(", ".join(f"{n} {k}" for k, n in counts.items()) + f" (of {len(states)} jobs)")
    return "\n".join(lines)
