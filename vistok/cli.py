"""What every command-line tool shares: errors it understands are one line on stderr and exit code 2;
``--debug`` (on every CLI) shows the traceback instead; anything else is a bug and keeps its traceback."""
from __future__ import annotations

import argparse
import math
import sys

DEBUG_HELP = "show the full traceback of an error instead of one line"


def understood() -> tuple[type, ...]:
    """Errors whose message already says what was wrong and what was expected."""
    return (ValueError, OSError) + _vistok_errors()


def _vistok_errors() -> tuple[type, ...]:
    out = []
    for mod, name in (("vistok.training.trainer", "TrainingDiverged"), ("vistok.training.run_lock", "RunBusy")):
        m = sys.modules.get(mod)  # only if already imported: a CLI that never trained raises none of these
        if m is not None:
            out.append(getattr(m, name))
    return tuple(out)


def run(main, argv=None) -> int:
    """Call ``main(argv)``; turn an understood error into ``error: ...`` and exit code 2 unless --debug."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    try:
        return main(args)
    except understood() as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        print("(run again with --debug for the traceback)", file=sys.stderr)
        return 2


def add_debug(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    return parser


def ranged(kind, lo=None, hi=None, lo_open=False, hi_open=False):
    """An argparse ``type`` that also checks a range (and that floats are finite)."""
    from vistok.schema import Range

    r = Range(lo, hi, lo_open, hi_open)

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if isinstance(v, float) and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number")
        if not r.ok(v):
            raise argparse.ArgumentTypeError(f"{text!r}: expected a value in {r.describe()}")
        return v

    parse.__name__ = kind.__name__
    return parse
