# Validate params.yaml + the profile overlay before any rule runs: a bad value stops here, naming it.
import sys

from aot_diffusion.config import ParamError, load_params

try:
    P = load_params("params.yaml", profile=config.get("profile"))
except ParamError as exc:
    sys.exit(f"params.yaml: {exc}")

PROFILE = P["profile"]
MODELS = list(P["models"])
THREADS = P["threads"]
OVERLAY = f"config/profiles/{PROFILE}.yaml"
CLI = f"aot-diffusion {{stage}} --profile {PROFILE} --threads {{threads}}"


def cli(stage):
    return CLI.format(stage=stage, threads="{threads}")
