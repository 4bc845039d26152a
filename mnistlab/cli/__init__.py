# PYTHON_ARGCOMPLETE_OK
"""The `mnistlab` command: one module per command, each parsing its flags and calling the
library; the error policy lives here, once.

Every user error (a bad flag, config, dataset, checkpoint, image or file) is one line on
stderr, ``mnistlab: error: ...``, and a non-zero exit (codes in ``common``); never a
traceback, unless ``--debug`` asks for one. Building the parser imports no torch, so
``mnistlab --help`` is fast. Shell completion: ``pip install argcomplete`` and
``eval "$(register-python-argcomplete mnistlab)"``.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence

from ..errors import MnistlabError
from . import (
    calibrate,
    compress,
    data,
    ensemble,
    evaluate,
    export,
    finetune,
    models,
    predict,
    report,
    runs,
    serve,
    train,
    tune,
)
from .common import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, PREFIX, HelpFormatter, Parser

# in the order `mnistlab --help` lists them
COMMANDS = (train, tune, finetune, compress, ensemble, evaluate, calibrate, report, runs, export,
            predict, serve, models, data)


def build_parser() -> Parser:
    from .. import __version__

    parser = Parser(prog="mnistlab", formatter_class=HelpFormatter, description=(
        "Develop, train, evaluate, fine-tune and deploy neural networks on MNIST-style data.\n"
        "Exit codes: 0 success, 1 partly failed, 2 bad input, 70 internal error, "
        "130 interrupted."))
    parser.add_argument("--version", action="version", version=f"mnistlab {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (also MNISTLAB_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        import argcomplete  # optional: shell completion

        argcomplete.autocomplete(parser)
    except ImportError:
        pass
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("MNISTLAB_DEBUG") == "1"
    try:
        return args.func(args) or 0
    except MnistlabError as e:
        if debug:
            traceback.print_exc()
        print(PREFIX + str(e).strip(), file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a file-system problem outside the library's own checks
        if debug:
            traceback.print_exc()
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"{PREFIX}{where}{e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mnistlab: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # a bug: say so in one line; --debug shows where
        if debug:
            raise
        print(f"mnistlab: internal error: {type(e).__name__}: {e} (rerun with --debug for "
              "the traceback, and please report it)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
