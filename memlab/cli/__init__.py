"""memlab's command line: one module per verb (``memlab/cli/<verb>.py``), each with
``add_arguments(parser)`` and ``run(args) -> int``. Errors meant for the user exit 2 with a message."""
from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys

from ..errors import MemlabError
from ..paths import out_folder  # noqa: F401 - the verbs' (and index_builder's) check of --out

VERBS = {
    "match": ("memlab.cli.match", "match images against a training index"),
    "run": ("memlab.cli.run", "generate over seeds (with mitigations) and match against a world"),
    "train": ("memlab.cli.train", "train or fine-tune a text-to-image pipeline (duplication controls)"),
    "train-descriptor": ("memlab.cli.train_descriptor", "train memlab's own copy-detection descriptor"),
    "train-verifier": ("memlab.cli.train_verifier", "train memlab's verification network (memlab-verify)"),
    "build-world": ("memlab.cli.build_world", "build the built-in world from nothing"),
    "world": ("memlab.cli.world", "create a world from a prompt list (fetch the training images, index them)"),
    "variants": ("memlab.cli.variants", "prompt variants of a keyword cluster (Memory Triggers), each on the same seeds"),
}


def config_arguments(p, cls, skip=()) -> None:
    """One ``--flag`` per field of a config dataclass ``cls`` (but ``skip``), its default in the help: whole numbers
    and decimals typed, booleans read from true / false, the rest as text."""
    import dataclasses

    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=f.default,
                           metavar="BOOL", help=f"(default {f.default})")
        else:
            typ = {"int": int, "float": float}.get(str(f.type), str)
            p.add_argument(flag, type=typ, default=f.default, help=f"(default {f.default!r})")


def trained(out, took: float, stopped_at: str) -> int:
    """A training verb's last line: the weights written, or where it stopped (``stopped_at``: "step 300")."""
    if out is None:
        print(f"stopped at {stopped_at} after {took / 60:.1f} min; run again to resume", file=sys.stderr)
    else:
        print(f"wrote {out} (config.json + model.safetensors) in {took / 60:.1f} min", file=sys.stderr)
    return 0


def device(text: str) -> str:
    """An argparse type for ``--device``: a torch device this machine has (``cpu``, ``cuda``, ``cuda:1``, ``mps``),
    else one ``error:`` line, before any model loads."""
    import torch

    try:
        d = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (cpu, cuda, cuda:1, mps)") from None
    if d.type == "cuda" and (not torch.cuda.is_available() or (d.index or 0) >= torch.cuda.device_count()):
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {have} CUDA device{'s' * (have != 1)}")
    if d.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has no MPS device")
    return text


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``error:`` line (exit 2) that points to --help; a ``python -m NAME``
    program run as the console script ``NAME`` (``pip install -e .``) names itself as it was typed."""

    def __init__(self, *args, prog: str | None = None, **kwargs):
        if prog and prog.startswith("python -m ") and os.path.basename(sys.argv[0]) == prog.split()[2]:
            prog = prog[len("python -m "):]
        super().__init__(*args, prog=prog, **kwargs)

    def error(self, message):
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def main(argv=None) -> int:
    parser = Parser(prog="python -m memlab", description="memlab: training-data "
                                     "memorization in text-to-image diffusion models")
    sub = parser.add_subparsers(dest="verb", required=True)
    argv = sys.argv[1:] if argv is None else list(argv)
    # only the verb asked for adds its arguments: some read a config class whose module imports torch,
    # which `--help` and a refused argument need not wait for
    chosen = next((a for a in argv if not a.startswith("-")), None)
    modules = {}
    for verb, (modname, help_) in VERBS.items():
        mod = importlib.import_module(modname)
        p = sub.add_parser(verb, help=help_, description=(mod.__doc__ or help_).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # the docstring's lines, as written
        if verb == chosen:
            mod.add_arguments(p)
        modules[verb] = mod
    args = parser.parse_args(argv)
    args.command = "python -m memlab " + shlex.join(argv)  # as records and cards name it (argv, not sys.argv)
    return guarded(modules[args.verb].run, args)


def guarded(fn, args) -> int:
    """Run a verb; user errors print one clear line and exit 2, never a traceback."""
    try:
        return int(fn(args) or 0)
    except MemlabError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the user named cannot be read or written (exists, is a file, no space...)
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug: one line for the user, the traceback on request
        if os.environ.get("MEMLAB_DEBUG"):
            raise
        print(f"error: memlab hit an unexpected {type(e).__name__} ({' '.join(str(e).split())[:200]}); "
              f"this is a bug: MEMLAB_DEBUG=1 shows the traceback", file=sys.stderr)
        return 1
