"""What made a result besides its parameters: the code a job runs, the files it reads through a parameter,
the bytes it wrote, and the software and machine it ran on.

**Code.** A job's code is the stage function it runs (dag.Stage.run) with the helpers of its module that the
function reaches, and the import closure of those inside this package, read from the source (no list kept
by hand). Each module counts by its syntax tree without docstrings, so comments, docstrings, blank lines and
formatting never change a digest; any other edit does. The orchestration modules (ORCHESTRATION) are not
followed: what they decide reaches a job as the parameters and paths its record holds already.
Plugins count file by file, normalised the same way; a job counts only the plugins it uses (dag.Plan).

**Outputs.** A finished job's record holds the sha256 of every file it wrote (and its size; an untracked cache keyed by size
and mtime spares re-hashing a file that did not move): an output that no longer matches is a hand edit, which
the Snakemake door rebuilds and never records in dvc.lock. (Sizes and hashes only: a record is tracked by DVC,
so it holds nothing that differs between two runs that wrote the same bytes.)

**Environment.** Python, torch, numpy, scipy, lap; device, threads, determinism flags: kept beside the
digest in every record (not in it), compared by ``aot-diffusion status`` and at the start of a run.
"""

from __future__ import annotations

import ast
import hashlib
import platform
from functools import lru_cache
from pathlib import Path

__all__ = ["PACKAGE_DIR", "ORCHESTRATION", "code_of", "code_files", "normalized_digest", "software", "file_sha256", "output_state",
           "changed_outputs", "environment", "environment_changes"]

PACKAGE = "aot_diffusion"
PACKAGE_DIR = Path(__file__).resolve().parent
# Modules that plan, route and record jobs rather than compute results: parameters' schema and composition
# checks, paths, the stage table, the doors, the CLI, cluster requests, plugin loading, this module.
ORCHESTRATION = frozenset(f"{PACKAGE}.{m}" if m else PACKAGE for m in (
    "", "cli", "dag", "dvcfile", "frontdoors", "cluster", "stages", "plugins", "schema", "layout", "provenance",
    "rehearsal", "status"))


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _dump(nodes) -> str:
    return "\n".join(ast.dump(n, include_attributes=False) for n in nodes)


def normalized_digest(source: str, name: str = "<source>") -> str:
    """sha256 of a Python source's syntax tree without docstrings: what an edit must change to count."""
    try:
        tree = _strip_docstrings(ast.parse(source, filename=name))
    except SyntaxError:  # not Python we can read: its bytes count
        return hashlib.sha256(source.encode()).hexdigest()
    return hashlib.sha256(_dump(tree.body).encode()).hexdigest()


def _module_path(module: str) -> Path | None:
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _resolve(module: str, is_package: bool, node: ast.AST) -> set:
    """The package modules an import statement of ``module`` brings in (its parent packages included)."""
    found = set()
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            parts = module.split(".")
            base = parts if is_package else parts[:-1]
            base = base[:len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        names = [target] + [f"{target}.{alias.name}" for alias in node.names]  # `from pkg import submodule`
    for name in names:
        if _module_path(name) is None:
            continue
        parts = name.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return found


def _imports(nodes, module: str, is_package: bool) -> set:
    out = set()
    for top in nodes:
        for node in ast.walk(top):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out |= _resolve(module, is_package, node)
    return out


@lru_cache(maxsize=None)
def _parsed(module: str) -> tuple:
    path = _module_path(module)
    tree = _strip_docstrings(ast.parse(path.read_text(), filename=str(path)))
    return path, tree


def _bound(node) -> set:
    return {(a.asname or a.name).split(".")[0] for a in node.names}


def _reached_definitions(tree: ast.Module, function: str) -> list:
    """The module's top-level statements that ``function`` needs: the function, the definitions it names
    (transitively), the module's other statements (constants), and the imports of the names these use."""
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    if function not in defs:
        raise KeyError(f"no function {function!r}")
    keep, todo = set(), [function]
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)
        todo += [n.id for n in ast.walk(defs[name]) if isinstance(n, ast.Name) and n.id in defs]
    imports = (ast.Import, ast.ImportFrom)
    body = [n for n in tree.body if not isinstance(n, imports) and (n.__class__ not in (
        ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef) or n.name in keep)]
    used = {n.id for top in body for n in ast.walk(top) if isinstance(n, ast.Name)}
    return [n for n in tree.body if isinstance(n, imports) and _bound(n) & used] + body


def _project_path(path: Path) -> str:
    """A package file as the project names it (dvc.yaml's dependencies), wherever the package was imported from."""
    return f"src/{PACKAGE}/{path.relative_to(PACKAGE_DIR).as_posix()}"


@lru_cache(maxsize=None)
def code_of(entry: str) -> tuple:
    """``entry``: a stage's ``module:function`` in aot_diffusion.stages. Returns ``(digest, parts)``: ``parts``
    maps each source file (relative to the project root; the stage module as ``path:function``) to the digest
    of what counts in it: the function and the helpers it reaches, then every package module they import,
    transitively (orchestration not followed). ``digest`` digests ``parts``."""
    module, function = entry.split(":")
    module = f"{PACKAGE}.stages.{module}"
    own, imports = _facts(module, function)
    parts = {f"{_project_path(_module_path(module))}:{function}": own}
    todo, seen = sorted(set(imports) - ORCHESTRATION), set()
    while todo:
        name = todo.pop()
        if name in seen or name in ORCHESTRATION:
            continue
        seen.add(name)
        parts[_project_path(_module_path(name))], imports = _facts(name, None)
        todo += sorted(set(imports) - seen - ORCHESTRATION)
    parts = dict(sorted(parts.items()))
    digest = hashlib.sha256("\n".join(f"{k} {v}" for k, v in parts.items()).encode()).hexdigest()[:16]
    return digest, parts


# What _facts derives from a source (its digest and package imports), by the sha256 of everything it derives
# from: every job computes the code digests of its whole upstream chain, and parsing the package again in each
# job costs more CPU than the smaller jobs' own work. Untracked; used only where a project's Snakefile is.
CODE_CACHE = Path(".snakemake") / "aot-diffusion-code"


@lru_cache(maxsize=None)
def _package_files() -> bytes:
    """The package's module files and this module's own source: what resolving imports and digesting reads."""
    names = sorted(p.relative_to(PACKAGE_DIR).as_posix() for p in PACKAGE_DIR.rglob("*.py"))
    return "\n".join(names).encode() + Path(__file__).read_bytes()


@lru_cache(maxsize=None)
def _facts(module: str, function: str | None) -> tuple:
    """(digest, package modules imported) of a module's body, or of one function of it with the definitions it
    reaches."""
    import json

    path = _module_path(module)
    key = hashlib.sha256(b"\0".join([path.read_bytes(), module.encode(), (function or "").encode(),
                                     _package_files()])).hexdigest()[:32]
    cache = CODE_CACHE / f"{key}.json" if Path("Snakefile").is_file() else None
    try:
        hit = json.loads(cache.read_text())
        return hit["digest"], tuple(hit["imports"])
    except (AttributeError, OSError, ValueError, KeyError, TypeError):
        pass
    _, tree = _parsed(module)
    nodes = _reached_definitions(tree, function) if function else tree.body
    digest = hashlib.sha256(_dump(nodes).encode()).hexdigest()[:16]
    imports = tuple(sorted(_imports(nodes, module, function is None and path.name == "__init__.py")))
    if cache is not None:
        try:
            from .utils import atomic_write_text

            atomic_write_text(cache, json.dumps({"digest": digest, "imports": list(imports)}))
        except OSError:  # a read-only checkout still answers, only slower
            pass
    return digest, imports


def code_files(entry: str) -> list:
    """The source files of a stage's code (dvc.yaml lists them as dependencies)."""
    return sorted({part.split(":")[0] for part in code_of(entry)[1]})


def plugin_digest(path: Path) -> str:
    return normalized_digest(path.read_text(), str(path)) if path.is_file() else "missing"


# ------------------------------------------------------------------------------------------------ files

def file_sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# sha256 by (size, mtime_ns), so a file is hashed again only once it moved; untracked (mtimes differ between
# copies of the same bytes, so they stay out of the records, which DVC tracks)
HASH_CACHE = Path(".snakemake") / "aot-diffusion-hashes"


def _cache_file(root: Path, rel: str) -> Path:
    return root / HASH_CACHE / (hashlib.sha1(rel.encode()).hexdigest() + ".json")


def content_sha256(path: Path, root: Path, rel: str) -> str:
    """sha256 of ``path``, read from the hash cache while its size and mtime are those it was hashed at."""
    import json

    st = path.stat()
    cache = _cache_file(root, rel)
    try:
        hit = json.loads(cache.read_text())
        if hit["size"] == st.st_size and hit["mtime_ns"] == st.st_mtime_ns:
            return hit["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    sha = file_sha256(path)
    try:
        from .utils import atomic_write_text

        atomic_write_text(cache, json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}))
    except OSError:  # a read-only checkout still answers, only slower
        pass
    return sha


def output_state(path: Path, root: Path, rel: str) -> dict:
    return {"sha256": content_sha256(path, root, rel), "size": path.stat().st_size}


def changed_outputs(recorded: dict, root: Path) -> list:
    """Outputs of a record that are missing or whose content is not what the job wrote."""
    changed = []
    for rel, want in recorded.items():
        path = root / rel
        if not path.is_file() or path.stat().st_size != want["size"] or content_sha256(path, root, rel) != want["sha256"]:
            changed.append(rel)
    return changed


# ------------------------------------------------------------------------------------------ environment

def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "absent"


def software(device: str, threads: int) -> dict:
    """The versions, processor, device and thread count (what a comparison needs; imports no torch)."""
    return {"python": platform.python_version(), **{m: _version(m) for m in ("torch", "numpy", "scipy", "lap", "pot")},
            "machine": platform.machine(), "cpu": _cpu_name(), "threads": int(threads), "device": device}


def environment(device: str | None = None, threads: int | None = None) -> dict:
    """The software and machine a job ran on (the parts that move numbers)."""
    import torch

    env = {**software(device or "cpu", threads or torch.get_num_threads()),
           "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
           "cudnn_deterministic": torch.backends.cudnn.deterministic,
           "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
           "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    if device and device.startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return env


@lru_cache(maxsize=1)
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# what, of the environment, moves a number when it changes (the CPU's name: only the last digits)
ENVIRONMENT_KEYS = ("python", "torch", "numpy", "scipy", "lap", "pot", "device", "device_name", "cpu", "threads")


def environment_changes(recorded: dict, current: dict) -> list:
    """``["torch 2.3.0 -> 2.14.1", ...]``: where the environment of a record differs from ``current``."""
    return [f"{k} {recorded.get(k)} -> {current.get(k)}" for k in ENVIRONMENT_KEYS
            if k in recorded and recorded.get(k) != current.get(k)]
