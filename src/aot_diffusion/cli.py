"""``aot-diffusion <stage> [--model M | --disc D | --variant V | --released]``: one subcommand per command of
the stage table (src/aot_diffusion/dag.py), which also says what each option runs (``--variant``: a variant
of the pool-size study; ``--released``: the released network pickle named by ``released_pickle``).

This module only parses arguments and dispatches to aot_diffusion.stages.
"""

from __future__ import annotations

import argparse
import sys

from . import dag


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="aot-diffusion", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for cli in dict.fromkeys(st.cli for st in dag.ALL_STAGES):
        overs = [st.over for st in dag.ALL_STAGES if st.cli == cli]
        sp = sub.add_parser(cli, help=f"run the stage(s) {', '.join(st.name for st in dag.ALL_STAGES if st.cli == cli)}")
        sp.add_argument("--params", default="params.yaml", help="the effective parameter file")
        if any(overs):
            which = sp.add_mutually_exclusive_group(required=None not in overs)
            for over in filter(None, overs):
                if over == "released":
                    which.add_argument("--released", action="store_true", help="the pickle named by released_pickle")
                else:
                    which.add_argument(f"--{over}")
    sub.choices["train"].add_argument("--stop-after", type=int, default=None,
                                      help="stop after this many steps (tests of resume)")
    sp = sub.add_parser("params", help="compose params.yaml from conf/ (profile + overrides) and check it")
    sp.add_argument("--profile", default=None, help="digits | smoke | cifar10 (default: conf/config.yaml's)")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override (YAML value)")
    sp.add_argument("--check", action="store_true", help="only validate the existing params.yaml")
    sp.add_argument("--show-origin", action="store_true",
                    help="print where each value comes from (conf/config.yaml, the profile's file, an override); "
                         "without --profile / --set: of the existing params.yaml")
    sp = sub.add_parser("dvc-yaml", help="regenerate dvc.yaml (and the pool-size study's, where it exists) from the "
                                         "stage table")
    sp.add_argument("--pool-study", action="store_true",
                    help="also write the pool-size study's pipeline file (it is not in the repository until a study "
                         "is asked for: a bare `dvc status` would list every stage of a study that never ran)")
    sp.add_argument("--from-params", action="store_true",
                    help="from the effective params.yaml instead of conf/'s composition (a DAG of another shape, "
                         "e.g. more training seeds: `make seeds`)")
    sub.add_parser("offline-plots", help="write .dvc/offline_plots.html, the page `dvc plots show/diff` fill, with "
                                         "Vega inlined (charts render without a network)")
    sp = sub.add_parser("compare", help="DVC experiments side by side: what differs among them, a row per parameter "
                                        "or metric (`dvc exp show --only-changed`, dependency hashes dropped)")
    sp.add_argument("--csv", action="store_true", help="dvc exp show's own CSV (a column per parameter or metric)")
    sp.add_argument("dvc_args", nargs="*", help="passed on to dvc exp show (after --), e.g. -- -A")
    sp = sub.add_parser("status", help="every job of the current parameters: current, stale (and why: parameter, "
                                       "code, plugin, input file, upstream, hand edit, environment) or missing")
    sp.add_argument("--params", default="params.yaml", help="the effective parameter file")
    sp.add_argument("--all", action="store_true", help="list current jobs too")
    sp.add_argument("--json", action="store_true", help="one JSON object per job")
    sp = sub.add_parser("dag", help="the DAG at stage level (--stages): one node per stage with its job count, as "
                                    "Graphviz DOT and PNG")
    sp.add_argument("--stages", action="store_true", required=True, help="one node per stage (the only level)")
    sp.add_argument("--params", default="params.yaml", help="the effective parameter file")
    sp.add_argument("--out", default=None, help="path prefix (default: results/<profile>/dag_stages)")
    sp = sub.add_parser("plan", help="what the default target costs before you submit it: jobs and GPU-hours per "
                                     "kind of stage, from the parameters and a per-GPU rate (stated, or yours)")
    sp.add_argument("--profile", default=None, help="compose this profile (default: the effective params.yaml)")
    sp.add_argument("--params", default="params.yaml", help="the effective parameter file (without --profile)")
    sp.add_argument("--train-img-per-s", type=float, default=None, help="training images per second per GPU")
    sp.add_argument("--evals-per-s", type=float, default=None, help="network evaluations per second per GPU")
    sp = sub.add_parser("readme", help="fill the generated result tables of the README and docs pages from a run's "
                                       "tables (default: docs/results, the default run's copy); --check: only say "
                                       "which differ")
    sp.add_argument("--results", default="docs/results", help="a folder of the tables stage's CSVs and params.yaml")
    sp.add_argument("--check", action="store_true", help="exit 1 if a generated block differs from the files")
    sp = sub.add_parser("rehearsal-inputs", help="write the rehearsal's stand-in inputs (CIFAR-10-format tarball, DG "
                                                 "classifier file, EDM network pickle) where its parameters name them")
    sp.add_argument("--released-pickle", default="data/rehearsal/network.pkl",
                    help="where to write the EDM network pickle for the `released` target")
    sp = sub.add_parser("grid", help="export a sample grid (PNG and PDF) of one model's sampled setting")
    sp.add_argument("--params", default="params.yaml", help="the effective parameter file")
    sp.add_argument("--model", required=True, help="a trained model, <model>_s<seed> (e.g. aot_uncond_s0)")
    sp.add_argument("--steps", type=int, required=True, help="Heun steps of a sampled setting")
    sp.add_argument("--rho", type=float, required=True, help="rho of a sampled setting")
    sp.add_argument("--seed", type=int, default=None, help="sampling seed (default: the first)")
    sp.add_argument("--count", type=int, default=100, help="images in the grid (the largest square that fits)")
    return ap


def _chosen(args) -> tuple[str | None, str | None]:
    """(over, key) from the stage options given."""
    for over in dag.KEYED:
        if getattr(args, over, None) is not None:
            return over, getattr(args, over)
    if getattr(args, "released", False):
        return "released", None
    return None, None


def _params_command(args) -> None:
    import yaml

    from .params import compose, flatten, load_params, origins, write_params

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        node = overrides
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    if args.check or (args.show_origin and args.profile is None and not overrides):
        p = load_params()
        if args.check:
            return print(f"params.yaml: OK (profile {p['profile']})")
    else:
        p = compose(args.profile, overrides)
    if args.show_origin:
        where = origins(p, overrides)
        width = max(map(len, where))
        for key, value in flatten(p).items():
            print(f"{key:<{width}}  {where[key]:<28}  {yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix('...').strip()}")
        return
    write_params(p)
    print("params.yaml: composed")


def _dvc_yaml_command(pool_study: bool, from_params: bool = False) -> None:
    from .dvcfile import POOL_STUDY_DVC, dvc_yaml, write_pool_study_dvc_yaml
    from .params import compose, load_params
    from .utils import atomic_write_text

    p = load_params("params.yaml") if from_params else compose()
    atomic_write_text("dvc.yaml", dvc_yaml(p))
    if pool_study or POOL_STUDY_DVC.exists():
        write_pool_study_dvc_yaml(p)
        return print(f"dvc.yaml, {POOL_STUDY_DVC}: regenerated")
    print(f"dvc.yaml: regenerated ({POOL_STUDY_DVC}, the pool-size study's, only with --pool-study)")


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    from .params import ParamError, UndeclaredParam

    try:
        if args.command == "params":
            return _params_command(args)
        if args.command == "dvc-yaml":
            return _dvc_yaml_command(args.pool_study, args.from_params)
        if args.command == "offline-plots":
            from .report.offline_plots import write_template

            return print(f"wrote {write_template()}")
        if args.command == "compare":
            from .report.compare import exp_show_command, exp_show_csv, transposed

            import shlex

            print("$ " + shlex.join(exp_show_command(*args.dvc_args)), file=sys.stderr)
            text = exp_show_csv(*args.dvc_args)
            import os

            import yaml

            from .report.compare import parameter_names

            params = parameter_names(yaml.safe_load(open("params.yaml"))) if os.path.exists("params.yaml") else None
            return print(text if args.csv else transposed(text, params), end="\n" if not args.csv else "")
        if args.command == "status":
            import json

            from .params import load_params
            from .status import format_states, job_states

            states = job_states(dag.Plan(load_params(args.params)))
            return print("\n".join(json.dumps(s) for s in states) if args.json else format_states(states, args.all))
        if args.command == "dag":
            from .layout import Layout
            from .params import load_params
            from .stage_graph import write_stage_graph

            plan = dag.Plan(load_params(args.params))
            out = args.out or Layout(plan.p["profile"]).results / "dag_stages"
            return print("wrote " + ", ".join(map(str, write_stage_graph(plan, out))))
        if args.command == "plan":
            from .cost import STATED_RATES, estimate, format_estimate
            from .params import compose, load_params

            p = compose(args.profile) if args.profile else load_params(args.params)
            rates = dict(STATED_RATES)
            if args.train_img_per_s or args.evals_per_s:
                rates.update(device="your rates", train_img_per_s=args.train_img_per_s or rates["train_img_per_s"],
                             evals_per_s=args.evals_per_s or rates["evals_per_s"])
            return print(format_estimate(p, estimate(p, rates["train_img_per_s"], rates["evals_per_s"]), rates))
        if args.command == "readme":
            from .report.readme import PAGES, update_pages

            stale = update_pages(".", args.results, check=args.check)
            if args.check and stale:
                print(f"generated blocks differ from {args.results}: {', '.join(stale)}", file=sys.stderr)
                sys.exit(1)
            return print(f"{', '.join(PAGES)}: {'checked' if args.check else 'updated'} from {args.results}")
        if args.command == "rehearsal-inputs":
            from .params import compose
            from .rehearsal import write_inputs

            written = write_inputs(compose("rehearsal"), released_pickle=args.released_pickle)
            return print("\n".join(f"wrote {what}: {path}" for what, path in written.items()))
        if args.command == "grid":
            from .report.figures import export_grid

            return print("wrote " + ", ".join(map(str, export_grid(args.params, args.model, args.steps, args.rho,
                                                                   args.seed, args.count))))
        from .stages import JobClock, Run
        from .utils import set_tf32, set_threads

        over, key = _chosen(args)
        st = dag.find_stage(args.command, over)
        run = Run(st, key, params_path=args.params)
        # torch's threads for every stage; declared (tracked) by the stages that run a network,
        # whose sums it changes (the report stages compute with numpy, which this setting doesn't touch).
        set_threads(run.plan.p["threads"])
        if "device" in run.plan.declared(st, key):
            set_tf32(run.params["tf32"])  # EDM's numerics on CUDA, before any CUDA work
            run.device  # a stage that runs a network checks its device before any work
        extra = {"stop_after": args.stop_after} if getattr(args, "stop_after", None) is not None else {}
        function = st.function()
        clock = JobClock()  # start-up ends here: interpreter, imports, parameters, the stage's module
        finished = function(run, **extra)
        if finished is not False:  # False: stopped early on purpose (train --stop-after); no record
            run.write_record()
            clock.write(run.plan.L.job_timing(dag.job_id(st, key)))
    except (ParamError, FileNotFoundError, UndeclaredParam) as exc:
        print(f"aot-diffusion {args.command}: error: {exc}", file=sys.stderr)
        sys.exit(2)


def entry() -> None:
    """The console script (and torchrun's ranks): main(), then, with everything written and flushed, an exit
    without the interpreter's teardown of torch's modules (0.3-0.4 CPU-seconds of every job;
    benchmarks/default_job.py). An error leaves the ordinary way."""
    import os

    main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    entry()
