"""Command-line flags generated from config dataclasses: each option's name, type, default and help are written
once, on the field, and `--dashed-flags` follow from them.

    @dataclass
    class ServerOptions(CliArgs):
        cli_title: ClassVar[str] = "server"
        port: int = option(8000, "TCP port to listen on")

    ServerOptions.add_cli_args(parser); options = ServerOptions.from_cli_args(parser.parse_args())
"""

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Collection, Sequence
from typing import Any, ClassVar, TypeVar

Config = TypeVar("Config", bound="CliArgs")


def option(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Any = dataclasses.MISSING,
           flag: str | None = None, choices: Sequence[Any] | None = None, group: str | None = None,
           repeatable: bool = False, env: str | None = None, secret: bool = False) -> Any:
    """A dataclass field that is also a command-line flag. `flag` overrides the name derived from the field's,
    `group` the help section it is listed under. A list field takes several values after its flag, or with
    `repeatable` one value per use of the flag. `env` names an environment variable that sets the default (a list
    field's comma-separated; the flags add to it). A `secret` field's value is never shown: not in --help, not in
    the dataclass's repr."""
    metadata = {"help": help, "flag": flag, "choices": choices, "group": group, "repeatable": repeatable, "env": env,
                "secret": secret}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata, repr=not secret)


class CliArgs:
    """Mixin for a config dataclass whose fields (made with `option`) are command-line flags."""

    __slots__ = ()
    cli_title: ClassVar[str]

    @classmethod
    def add_cli_args(cls, parser: argparse.ArgumentParser, exclude: Collection[str] = ()) -> None:
        """A flag for every field but those named in `exclude` (a caller that sets them itself)."""
        hints = typing.get_type_hints(cls)
        groups: dict[str, argparse._ArgumentGroup] = {}
        for field in dataclasses.fields(cls):  # type: ignore[arg-type]
            if field.name in exclude:
                continue
            meta = field.metadata
            title = meta.get("group") or cls.cli_title
            group = groups.get(title) or groups.setdefault(title, parser.add_argument_group(f"{title} options"))
            name = meta.get("flag") or field.name
            default = field.default_factory() if field.default is dataclasses.MISSING else field.default
            kind = _without_none(hints[field.name])
            help_text = meta.get("help", "")
            if meta.get("env"):
                help_text += f" (environment: {meta['env']}" + (", comma-separated)" if typing.get_origin(kind) is list
                                                                 else ")")
                if os.environ.get(meta["env"]):
                    default = _from_env(os.environ[meta["env"]], kind)
            if not (default is None or default is False or default == [] or meta.get("secret")):
                help_text += " (default: %(default)s)"
            kwargs: dict[str, Any] = {"dest": field.name, "default": default, "help": help_text}
            if kind is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            elif meta.get("choices"):
                kwargs.update(type=kind, choices=meta["choices"])
            elif typing.get_origin(kind) is list and meta.get("repeatable"):
                kwargs.update(action="append", type=typing.get_args(kind)[0], metavar=name.upper())
            elif typing.get_origin(kind) is list:
                kwargs.update(nargs="+", type=typing.get_args(kind)[0], metavar=name.upper())
            else:
                kwargs.update(type=kind, metavar=name.upper())
            group.add_argument("--" + name.replace("_", "-"), **kwargs)

    @classmethod
    def from_cli_args(cls: type[Config], args: argparse.Namespace, **overrides: Any) -> Config:
        """The config the flags in `args` describe; `overrides` sets fields directly (excluded flags among them)."""
        values = {field.name: getattr(args, field.name) for field in dataclasses.fields(cls)  # type: ignore
                  if hasattr(args, field.name)}
        return cls(**(values | overrides))


def _from_env(text: str, kind: Any) -> Any:
    if typing.get_origin(kind) is list:
        item = typing.get_args(kind)[0]
        return [item(part.strip()) for part in text.split(",") if part.strip()]
    if kind is bool:
        return text.strip().lower() in ("1", "true", "yes", "on")
    return kind(text)


def _without_none(annotation: Any) -> Any:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    return annotation
