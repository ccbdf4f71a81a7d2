"""``aot-diffusion <stage> [--model M | --disc D | --variant V]``: one subcommand per pipeline stage
(src/aot_diffusion/dag.py); ``--variant`` runs a stage for a variant of the pool-size study.

Stages read the effective parameters from params.yaml and take every path from layout.Layout; this module
only parses arguments and dispatches to aot_diffusion.stages.
"""

from __future__ import annotations

import argparse
import sys

# subcommand -> (module in aot_diffusion.stages, function, what it is keyed by)
STAGES = {
    "check-params": ("data", "check_params", None),
    "prepare-data": ("data", "prepare_data", None),
    "feature-network": ("data", "feature_network", None),
    "fd-reference": ("data", "fd_reference", None),
    "train": ("train", "train", "model"),
    "sample": ("sample", "sample", "model"),
    "fd": ("evaluate", "fd", "model"),
    "curvature": ("evaluate", "curvature", "model"),
    "fake-samples": ("sample", "fake_samples", "model"),
    "train-encoder": ("guidance", "train_encoder", None),
    "train-discriminator": ("guidance", "train_discriminator", "disc"),
    "guided-sample": ("guidance", "guided_sample", "disc"),
    "guided-fd": ("evaluate", "guided_fd", "disc"),
    "tables": ("report", "tables", None),
    "figures": ("report", "figures", None),
    "pool-study": ("report", "pool_study", None),
}
# Stages that also run for a variant of the pool-size study (`--variant V` instead of `--model M`).
VARIANT_STAGES = ("train", "sample", "fd", "curvature")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="aot-diffusion", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name, (_, _, key) in STAGES.items():
        sp = sub.add_parser(name, help=f"run the {name} stage")
        sp.add_argument("--params", default="params.yaml", help="the effective parameter file")
        if name in VARIANT_STAGES:
            which = sp.add_mutually_exclusive_group(required=True)
            which.add_argument("--model")
            which.add_argument("--variant", help="a variant of the pool-size study (pool_study.variants)")
        elif key:
            sp.add_argument(f"--{key}", required=True)
    sp = sub.choices["train"]
    sp.add_argument("--stop-after", type=int, default=None, help="stop after this many steps (tests of resume)")
    sub.choices["sample"].add_argument("--network", default=None, help="a released .pkl instead of the model's")
    sp = sub.add_parser("params", help="compose params.yaml from conf/ (profile + overrides) and check it")
    sp.add_argument("--profile", default=None, help="digits | smoke | cifar10 (default: conf/config.yaml's)")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override (YAML value)")
    sp.add_argument("--check", action="store_true", help="only validate the existing params.yaml")
    sub.add_parser("dvc-yaml", help="regenerate dvc.yaml (and the pool-size study's) from the stage table")
    return ap


def _params_command(args) -> None:
    import yaml

    from .params import compose, load_params, write_params

    if args.check:
        p = load_params()
        print(f"params.yaml: OK (profile {p['profile']})")
        return
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
    write_params(compose(args.profile, overrides))
    print("params.yaml: composed")


def _dvc_yaml_command() -> None:
    from .dag import POOL_STUDY_DVC, dvc_yaml, pool_study_dvc_yaml
    from .params import compose
    from .utils import atomic_write_text

    p = compose()
    atomic_write_text("dvc.yaml", dvc_yaml(p))
    atomic_write_text(POOL_STUDY_DVC, pool_study_dvc_yaml(p))
    print(f"dvc.yaml, {POOL_STUDY_DVC}: regenerated")


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    from .params import ParamError

    try:
        if args.command == "params":
            return _params_command(args)
        if args.command == "dvc-yaml":
            return _dvc_yaml_command()
        import importlib

        from .stages import Run
        from .utils import set_threads

        module, func, key = STAGES[args.command]
        variant = getattr(args, "variant", None)
        run = Run(args.command, variant or (getattr(args, key) if key else None), params_path=args.params,
                  study=variant is not None)
        set_threads(run.p["threads"])
        if module not in ("report",) and func not in ("prepare_data", "check_params"):
            run.device  # a stage that runs a network checks its device before any work
        extra = {k: v for k, v in (("stop_after", getattr(args, "stop_after", None)),
                                   ("network", getattr(args, "network", None))) if v is not None}
        getattr(importlib.import_module(f".stages.{module}", __package__), func)(run, **extra)
    except (ParamError, FileNotFoundError) as exc:
        print(f"aot-diffusion {args.command}: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
