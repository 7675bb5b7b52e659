"""`ordermerge` command line: one subcommand per pipeline stage; each is also a library call.

User errors (OrdermergeError, bad arguments) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from . import OrdermergeError, __version__

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[..., Any]]] = {}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every other user error
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def command(name: str, add_args: Callable[[argparse.ArgumentParser], None]):
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        COMMANDS[name] = (add_args, fn)
        return fn

    return deco


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MB, 1048576)")
    unit = (m.group(2) or "").upper().rstrip("B").rstrip("I")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(unit or " "))


def parse_kv(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise OrdermergeError(f"--param {item!r}: expected key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


# --------------------------------------------------------------------------------------- merge
def _merge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="base model folder (HF, safetensors)")
    p.add_argument("--models", required=True, nargs="+", help="sub-model folders (≥ 2)")
    p.add_argument("--strategy", required=True, help="merge strategy (see `ordermerge strategies`)")
    p.add_argument("--param", action="append", metavar="K=V", help="strategy parameter")
    p.add_argument("--weights", nargs="+", type=float, help="one positive weight per sub-model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="output dtype")
    p.add_argument("--max-shard-size", type=parse_size, default="5GB")
    p.add_argument("--out", required=True, help="output folder (written atomically)")


@command("merge", _merge_args)
def _merge(a: argparse.Namespace) -> None:
    from .merge import merge

    meta = merge(
        a.base,
        a.models,
        a.out,
        a.strategy,
        parse_kv(a.param),
        a.weights,
        a.seed,
        a.dtype,
        a.max_shard_size,
        progress=not a.quiet,
    )
    s = meta["summary"]
    gbs = s["bytes_read"] / 1e9 / max(s["seconds"], 1e-9)
    print(
        f"merged {s['tensors']} tensors ({s['bytes_read'] / 1e9:.2f} GB read, "
        f"{s['bytes_written'] / 1e9:.2f} GB written) in {s['seconds']:.1f} s, "
        f"{gbs:.2f} GB/s -> {a.out}"
    )


def _strategies_args(p: argparse.ArgumentParser) -> None:
    pass


@command("strategies", _strategies_args)
def _strategies(a: argparse.Namespace) -> None:
    from .merge import REGISTRY

    for name, s in sorted(REGISTRY.items()):
        params = ", ".join(f"{k}={p.default}" for k, p in s.params.items())
        doc = (s.fn.__doc__ or "").strip().splitlines()[0]
        print(f"{name:20s} {params:28s} {doc}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ordermerge", description=__doc__)
    p.add_argument("--version", action="version", version=f"ordermerge {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _register_late_commands()
    for name, (add_args, fn) in COMMANDS.items():
        sp = sub.add_parser(name, help=(fn.__doc__ or "").strip().split("\n")[0] or None)
        add_args(sp)
        sp.set_defaults(func=fn)
    return p


def _register_late_commands() -> None:
    # Stage commands live beside their library code; importing the modules registers them.
    from . import commands  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        args.func(args)
    except OrdermergeError as e:
        sys.stderr.write(f"ordermerge {args.command}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"ordermerge {args.command}: interrupted\n")
        return 130
    except OSError as e:  # a file the command reads or writes: name it, no traceback
        where = f"{e.filename}: " if e.filename else ""
        sys.stderr.write(f"ordermerge {args.command}: error: {where}{e.strerror or e}\n")
        return 1
    except Exception as e:
        if os.environ.get("ORDERMERGE_DEBUG"):
            raise
        sys.stderr.write(
            f"ordermerge {args.command}: internal error: {type(e).__name__}: {e} "
            "(set ORDERMERGE_DEBUG=1 for the traceback; please report it)\n"
        )
        return 1
    if not getattr(args, "quiet", False):
        sys.stderr.write(f"ordermerge {args.command}: done in {time.perf_counter() - t0:.1f} s\n")
    return 0

