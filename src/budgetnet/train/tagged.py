"""Config sections that are one of several kinds told apart by `name` (an optimizer, a schedule).

Each kind is its own pydantic model holding only the settings it uses, so a setting that does
not apply (`schedule: {name: cosine, plateau_patience: 3}`) is an error that names the setting
and the kind, not a silent no-op. `tagged_union` makes the section's type: a union
discriminated on `name` (default `default` when the mapping leaves it out), validated by the
kind's own model so that error locations read `schedule.plateau_patience`, without the tag
pydantic's own union validation puts in them.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Annotated, Any, Union

from pydantic import BaseModel, Field, ValidationError, ValidatorFunctionWrapHandler, WrapValidator
from pydantic_core import PydanticCustomError


def kinds(union: Any) -> dict[str, type[BaseModel]]:
    """Every `name` a tagged union takes, in declaration order, with the model of that kind."""
    members = typing.get_args(typing.get_args(union)[0])
    return {name: member for member in members for name in typing.get_args(member.model_fields["name"].annotation)}


def tagged_union(*members: type[BaseModel], noun: str, default: str,
                 legacy: tuple[frozenset[str], frozenset[str]]) -> Any:
    """The type of a section that is one of `members` by its `name`; `noun` names the
    section in errors ("the cosine schedule"). `legacy`: the fields of the section when one
    model held every kind's settings, in its first version and in its last (fields were only
    added). A mapping with all the first's keys and none beyond the last's is such a model's
    dump (a run directory's config.yaml, a checkpoint, a search's best.yaml): the settings its
    kind does not take, which never had an effect, are dropped rather than refused."""
    union = Annotated[Union[members], Field(discriminator="name")]  # noqa: UP007 - a tuple of types
    by_name = kinds(union)

    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if not isinstance(value, Mapping):
            return handler(value)  # a model instance, or a type error pydantic words
        fields = {"name": default} | dict(value)
        kind = by_name.get(fields["name"]) if isinstance(fields["name"], str) else None
        if kind is None:
            expected = ", ".join(repr(name) for name in by_name)
            raise _error(("name", "literal_error", fields["name"], {"expected": expected}))
        settings = kind.model_fields
        first, last = legacy
        if first <= set(fields) <= last:
            fields = {key: v for key, v in fields.items() if key in settings}
        foreign = [key for key in fields if key not in settings]
        if foreign:
            takes = ", ".join(key for key in settings if key != "name") or "no settings"
            detail = PydanticCustomError("unknown_setting", "not a setting of the {kind} {noun}, which takes {takes}",
                                         {"kind": fields["name"], "noun": noun, "takes": takes})
            raise _error(*((key, detail, fields[key], None) for key in foreign))
        return kind.model_validate(fields)

    return Annotated[union, WrapValidator(validate)]


def _error(*errors: tuple[str, Any, Any, dict[str, Any] | None]) -> ValidationError:
    """A ValidationError at (key, error type, input, context) locations inside the section."""
    return ValidationError.from_exception_data(
        "section", [{"type": kind, "loc": (key,), "input": value, **({"ctx": ctx} if ctx else {})}
                    for key, kind, value, ctx in errors],
    )
