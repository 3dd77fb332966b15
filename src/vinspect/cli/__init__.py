"""Command line: parse options (and --config YAML), call the library, print.  Exit codes: 0 success,
2 bad input or usage, 1 internal error, 130 interrupted (what was computed is kept in the cache).

One module per command group, each exposing ``add_parser(subparsers, parser_class)``: ``classify`` (and the
top-level aliases extract, evaluate, train, compare), ``model`` (predict, export, explain: any task),
``backbones`` (backbones, layers, benchmark), ``serve`` (serve, inspections), ``thermo``, and the task groups.
The shared scaffold (parser, epilog, --config, -q) is :mod:`.common`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from .. import __version__
from ..errors import BadInputError, VinspectError
from .common import EPILOG, Parser, apply_config

_Parser = Parser  # the name command-group modules received before the split

# command groups, each a module of this package exposing add_parser(subparsers, parser_class)
GROUP_MODULES = ("serve", "thermo", "segment", "wear", "anomaly", "detect")


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="vinspect", description="Industrial visual inspection with CNNs: classify, find anomalies, "
                "segment and measure wear; predict, serve, export and explain any trained model.", epilog=EPILOG)
    ap.add_argument("--version", action="version", version=f"vinspect {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    from . import classify

    classify.add_commands(sub)  # vinspect 0.1's top-level extract, evaluate, train, compare (aliases)
    for name in ("classify", "model", "backbones", *GROUP_MODULES):
        importlib.import_module(f".{name}", __name__).add_parser(sub, Parser)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(os.environ.get("VINSPECT_DEBUG"))
    if not debug:
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", module="sklearn")
    ap = build_parser()
    try:
        try:
            args = apply_config(ap, argv)
        except SystemExit as e:  # argparse: usage error (2) or --help/--version (0), already printed
            return int(e.code or 0)
        if getattr(args, "quiet", False):
            os.environ["TQDM_DISABLE"] = "1"
        return int(args.func(args) or 0)
    except BadInputError as e:
        print(f"vinspect: error: {e}", file=sys.stderr)
        return 2
    except VinspectError as e:
        print(f"vinspect: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vinspect: interrupted; what was computed is kept (features in the cache, training checkpoints "
              "and finished splits in the output folder): run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - never a traceback for the user, unless asked
        if debug:
            raise
        print(f"vinspect: internal error: {type(e).__name__}: {e} (set VINSPECT_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
