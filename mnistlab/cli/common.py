"""What every command shares: the parser class with one-line errors, the training flags
built from the config's field metadata, and the exit codes.

Exit codes (the same for every command):
    0   success
    1   partly failed: some inputs could not be processed (each reported), or training
        diverged (the last good checkpoint is kept)
    2   bad input: a flag, config, dataset, checkpoint, image or file the user can fix
    70  an internal error (a bug: please report it; --debug shows the traceback)
    130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, NoReturn

from ..config import FIELDS, TrainConfig, field_kind
from ..errors import ConfigError

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 70, 130
PREFIX = "mnistlab: error: "


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``mnistlab: error: ...``) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PREFIX}{message} (see `{self.prog} --help`)\n")


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default (when it has a meaningful one); keeps descriptions' line
    breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" not in text and action.option_strings and action.default not in
                (None, False, [], argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(indent + line for line in text.splitlines())


def command(sub: Any, name: str, help: str, description: str | None = None,
            **kw: Any) -> Parser:
    return sub.add_parser(name, help=help, description=description or help,
                          formatter_class=HelpFormatter, **kw)


def _metavar(name: str) -> str:
    choices = FIELDS[name].metadata["choices"]
    if choices:
        return "{" + ",".join(map(str, choices)) + "}"
    return {int: "INT", float: "FLOAT", str: "TEXT", tuple: "B1,B2", dict: "JSON"}[
        field_kind(name)]


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (``--batch-size`` ...), grouped, with help, type,
    choices and default from the field's metadata. Values stay strings here; the config
    parses and checks them (so a TOML recipe and a flag go through the same checks)."""
    groups: dict[str, Any] = {}
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        group = groups.get(meta["group"])
        if group is None:
            group = groups[meta["group"]] = p.add_argument_group(
                f"{meta['group']} settings (override the recipe)")
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        shown = default if not isinstance(default, tuple) else ",".join(map(str, default))
        text = meta["help"].replace("%", "%%") + f" [default: {shown!r}]"
        if field_kind(f.name) is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=None, help=text)
        else:
            group.add_argument(flag, dest=f.name, default=None, metavar=_metavar(f.name),
                               help=text)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any field, e.g. --set lr=0.01 (repeatable)")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The training fields given on the command line (flags, then --set, then --quiet)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
              if getattr(args, f.name, None) is not None}
    for item in getattr(args, "sets", []):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"--set: expected FIELD=VALUE, got {item!r}")
        values[key.strip().replace("-", "_")] = value
    if getattr(args, "quiet", False):
        values["progress"] = False
    return values


def warn(message: str) -> None:
    print(f"mnistlab: warning: {message}", file=sys.stderr)
