"""What every command group shares: the parser class (usage errors: one line, exit 2), the epilog with the
exit codes, the standard options (``--config``, ``-q``), ``--config`` YAML loading, and small helpers."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import BadInputError

EPILOG = "Exit codes: 0 success, 2 bad input or usage, 1 internal error."


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def command(sub, name: str, help_: str, func, config: bool = True, full_name: str | None = None,
            description: str | None = None, epilog: str = EPILOG,
            quiet_help: str = "no progress bars") -> argparse.ArgumentParser:
    """A sub-command with the standard options; ``func(args) -> exit code``; ``full_name`` (e.g.
    "classify train") names it in messages; ``description``: a longer text for --help than ``help_``."""
    p = sub.add_parser(name, help=help_, description=description or help_, epilog=epilog)
    if config:
        p.add_argument("--config", metavar="FILE", help="YAML file whose keys are this command's option names; "
                       "options on the command line override it")
    p.add_argument("-q", "--quiet", action="store_true", help=quiet_help)
    p.set_defaults(func=func, _parser=p, _name=full_name or name)
    return p


def group(sub, name: str, help_: str, description: str | None = None, epilog: str = EPILOG):
    """A command group (``vinspect NAME SUBCOMMAND``): returns its sub-parsers action."""
    gp = sub.add_parser(name, help=help_, description=description or help_, epilog=epilog)
    gp.set_defaults(func=lambda args: _usage(gp), _parser=gp)
    return gp.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND", parser_class=Parser)


def _usage(p) -> int:
    p.print_help(sys.stderr)
    return 2


def quiet(args) -> bool:
    q = bool(getattr(args, "quiet", False))
    if q:
        os.environ["TQDM_DISABLE"] = "1"
    return q


def apply_config(ap: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; a ``--config`` YAML file sets the command's defaults (the command line overrides it)."""
    args = ap.parse_args(argv)
    if args.command is None:
        ap.print_help(sys.stderr)
        ap.exit(2)
    if getattr(args, "config", None):
        import yaml

        path = Path(args.config)
        try:
            cfg = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise BadInputError(f"--config {path}: no such file") from None
        except (OSError, yaml.YAMLError) as e:
            raise BadInputError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(cfg, dict):
            raise BadInputError(f"--config {path}: expected a mapping of option names to values")
        subparser = args._parser
        dests = {a.dest: a for a in subparser._actions}  # noqa: SLF001
        defaults = {}
        for key, value in cfg.items():
            dest = str(key).lstrip("-").replace("-", "_")
            if dest not in dests or dest in ("help", "config"):
                valid = sorted(d.replace("_", "-") for d in dests if d not in ("help", "config"))
                raise BadInputError(f"--config {path}: unknown option {key!r} for '{args._name}' "
                                    f"(valid: {', '.join(valid)})")
            action = dests[dest]
            if isinstance(action, argparse._AppendAction) and not isinstance(value, list):  # noqa: SLF001
                value = [value]
            if action.choices is not None and value not in action.choices and not isinstance(value, list):
                raise BadInputError(f"--config {path}: {key}: {value!r} is not one of {list(action.choices)}")
            defaults[dest] = value
        subparser.set_defaults(**defaults)
        args = ap.parse_args(argv)
    return args


def need(args, *names):
    """Refuse a missing positional (DATA, MODEL) or required option in one line."""
    for n in names:
        if getattr(args, n, None) in (None, [], ""):
            flag = n.upper() if n in ("data", "model", "images") else "--" + n.replace("_", "-")
            raise BadInputError(f"{getattr(args, '_name', args.command)}: missing {flag}")


def report_skipped(skipped, limit: int = 20) -> None:
    for s in skipped[:limit]:
        d = s if isinstance(s, dict) else s.as_dict()
        print(f"skipped: {d['path']}: {d['reason']}", file=sys.stderr)
    if len(skipped) > limit:
        print(f"skipped: ... and {len(skipped) - limit} more (listed in results.json)", file=sys.stderr)


def default_out(kind: str, data) -> Path:
    return Path("runs") / f"{kind}-{Path(str(data)).resolve().name}"


def add_engine(g) -> None:
    """--engine and --precision: one definition for every command that runs a backbone."""
    from ..features.extract import DEFAULT_ENGINE, ENGINES, PRECISIONS

    g.add_argument("--engine", default=DEFAULT_ENGINE, choices=list(ENGINES),
                   help="runtime of the backbone; onnx and the others are exported once and cached "
                        "(default: %(default)s; see the README's performance section)")
    g.add_argument("--precision", choices=[p for p in PRECISIONS if p],
                   help="numeric precision of the engine (default: the engine's own)")
