"""Flags declared once: each says which run-config field it sets, and groups of flags are added
to the commands that share them.

A flag that sets a config field carries `Sets("section.key")` in its `Annotated` type, next to
its `typer.Option`; the overrides a command's flags make come from those markers alone
(`flag_overrides`), and tests/test_cli_flags.py checks every marker against the schema
(`budgetnet.config.RunConfig`): the field exists, the flag's type is the field's, and a flag
not given leaves the field as the config says. `with_flags` adds a group of such flags (the
model flags of `summary`, `fit` and `train`) to a command. Importing this module does not import
torch.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperCommand

Command = TypeVar("Command", bound=Callable[..., Any])


class Sets:
    """`Annotated` metadata of a flag: the dotted config fields its value goes to (`parse`d
    first, when given), and the fields it sets to constants alongside (`also`)."""

    def __init__(self, *paths: str, parse: Callable[[Any], Any] | None = None,
                 also: Mapping[str, Any] | None = None) -> None:
        self.paths, self.parse, self.also = paths, parse, dict(also or {})

    def __repr__(self) -> str:
        return f"Sets{self.paths}"


def flag(name: str, kind: Any, panel: str, sets: Sets | None = None, help: str | None = None) -> Any:
    """The `Annotated` type of a flag `name` that defaults to not given (None): `kind | None`,
    listed under `panel` in --help, setting what `sets` names."""
    option = typer.Option(name, help=help, rich_help_panel=panel)
    return Annotated[kind | None, option] if sets is None else Annotated[kind | None, option, sets]


def flag_markers(flags: Mapping[str, Any]) -> dict[str, Sets]:
    """The `Sets` marker of each flag (parameter name -> Annotated type) that has one."""
    markers = {}
    for name, annotation in flags.items():
        found = [m for m in getattr(annotation, "__metadata__", ()) if isinstance(m, Sets)]
        if found:
            markers[name] = found[0]
    return markers


def command_flags(command: Callable[..., Any]) -> dict[str, Any]:
    """A command's parameters (parameter name -> annotation), the added flag groups included."""
    return {name: p.annotation for name, p in inspect.signature(command, eval_str=True).parameters.items()}


def flag_overrides(flags: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The nested config overrides the given `values` (parameter name -> value; None, False or
    empty: not given) of `flags` make."""
    overrides: dict[str, Any] = {}
    for name, marker in flag_markers(flags).items():
        value = values.get(name)
        if value is None or value is False or value == () or value == []:
            continue
        parsed = marker.parse(value) if marker.parse is not None else value
        for path in marker.paths:
            _put(overrides, path, parsed)
        for path, constant in marker.also.items():
            _put(overrides, path, constant)
    return overrides


def _put(tree: dict[str, Any], path: str, value: Any) -> None:
    *sections, key = path.split(".")
    for section in sections:
        tree = tree.setdefault(section, {})
    tree[key] = list(value) if isinstance(value, tuple) else value


def with_flags(flags: Mapping[str, Any], into: str | None = None) -> Callable[[Command], Command]:
    """Add `flags` (parameter name -> Annotated type; each defaults to None: not given) to a
    Typer command's parameters, after its own. The command receives their values as one
    mapping in its parameter `into`; with None, only through the click context's `params`."""

    def add(command: Command) -> Command:
        own = inspect.signature(command, eval_str=True)
        keyword = inspect.Parameter.KEYWORD_ONLY
        params = [p.replace(kind=keyword) for p in own.parameters.values() if p.name != into]
        params += [inspect.Parameter(name, keyword, annotation=annotation, default=None)
                   for name, annotation in flags.items()]

        @functools.wraps(command)
        def run(**values: Any) -> Any:
            given = {name: values.pop(name) for name in flags}
            return command(**values, **({into: given} if into else {}))

        run.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        return typing.cast(Command, run)

    return add


class GroupedHelp(TyperCommand):
    """A command whose --help lists its options under headings (each option's
    `rich_help_panel`), in plain text: the app prints help text as written, without markup."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        groups: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                plain = "Arguments" if param.param_type_name == "argument" else "Options"
                groups.setdefault(getattr(param, "rich_help_panel", None) or plain, []).append(record)
        for heading, records in groups.items():
            with formatter.section(heading):
                formatter.write_dl(records)
