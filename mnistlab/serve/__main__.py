"""``python -m mnistlab.serve RUN [--host --port ...]``: the same as ``mnistlab serve``."""

import argparse
import sys

from . import add_serve_parser


class _Standalone:
    """Stands in for argparse subparsers: ``add_parser`` makes the top-level parser."""

    def add_parser(self, name: str, help: str = "", **kwargs) -> argparse.ArgumentParser:
        return argparse.ArgumentParser(prog="python -m mnistlab.serve", **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = add_serve_parser(_Standalone())
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
