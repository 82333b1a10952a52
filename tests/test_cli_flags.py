"""Every flag that sets a run-config field is checked against the schema (`RunConfig`): the
field exists, the flag's type is the field's (a choice field's flag names every choice in its
help), and a flag not given leaves the field as the config says. So a schema field and its
flag cannot drift apart: renaming, retyping or adding a field, or a flag, fails here first."""

from __future__ import annotations

import inspect
import types
import typing
from typing import Annotated, Any, Literal, Union

import pytest
from pydantic import BaseModel, BeforeValidator, TypeAdapter
from typer.models import OptionInfo

from budgetnet.cli._data_options import DATA_FLAGS
from budgetnet.cli._flags import Sets, command_flags, flag, flag_markers, flag_overrides
from budgetnet.cli._model_options import MODEL_FLAGS
from budgetnet.cli.models import fit, summary
from budgetnet.cli.train import config_overrides, train
from budgetnet.config import RunConfig, load_config
from budgetnet.models import load_model_section

# What a train invocation does rather than what the run is: no config field behind them.
COMMAND_ONLY = {"ctx", "config", "recipe", "resume", "out", "nproc", "set_values", "quiet", "json_out"}
# Keys a section takes beyond its model's fields: the zoo expands `preset` before validation.
SECTION_KEYS = {"model.preset": str}


def core(t: Any) -> Any:
    """`t` without `Annotated` metadata and without None, nested types alike."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is Annotated:
        return core(args[0])
    if origin in (Union, types.UnionType):
        members = [core(a) for a in args if a is not type(None)]
        return members[0] if len(members) == 1 else Union[tuple(members)]  # noqa: UP007 - a tuple of types
    if origin in (list, tuple, dict):
        return origin[tuple(core(a) for a in args)]
    return t


def union_members(t: Any) -> tuple[Any, ...]:
    """The kinds a union field takes (a flag may set one of them: ``bool | Download``); () otherwise."""
    return typing.get_args(t) if typing.get_origin(t) is Union else ()


def choices(t: Any) -> tuple[Any, ...]:
    """The values of a Literal field (or a list of them); () for any other type."""
    if typing.get_origin(t) is list:
        t = typing.get_args(t)[0]
    return typing.get_args(t) if typing.get_origin(t) is Literal else ()


def models_in(t: Any) -> list[type[BaseModel]]:
    """The models a section's annotation holds: one, one or None, or the kinds of a tagged union."""
    t = core(t)
    members = typing.get_args(t) if typing.get_origin(t) is Union else (t,)
    return [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]


def schema_field(path: str) -> tuple[Any, Any, bool] | None:
    """(annotation, default, reads text) of the RunConfig field at dotted `path`; None when there
    is none. In a tagged union the field must be every kind's; `name` is the union's tag."""
    if path in SECTION_KEYS:
        return SECTION_KEYS[path], None, False
    owners: list[type[BaseModel]] = [RunConfig]
    *sections, key = path.split(".")
    for section in sections:
        if not all(section in o.model_fields for o in owners):
            return None
        owners = [m for o in owners for m in models_in(o.model_fields[section].annotation)]
    if not owners or not all(key in o.model_fields for o in owners):
        return None
    fields = [o.model_fields[key] for o in owners]
    if key == "name" and len(owners) > 1:
        names = tuple(n for f in fields for n in typing.get_args(f.annotation))
        return Literal[names], fields[0].default, False
    annotation = fields[0].annotation
    assert all(core(f.annotation) == core(annotation) for f in fields), f"{path} differs between kinds"
    before = any(d.info.mode == "before" and key in d.info.fields
                 for o in owners for d in o.__pydantic_decorators__.field_validators.values())
    parses_itself = any(isinstance(m, BeforeValidator) for m in fields[0].metadata) or own_parser(annotation)
    return annotation, fields[0].get_default(call_default_factory=True), before or parses_itself


def own_parser(t: Any) -> bool:
    """Whether `t`, or a member of it (``Flops | None``), is `Annotated` with a before-validator."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is Annotated:
        return any(isinstance(m, BeforeValidator) for m in t.__metadata__)
    return origin in (Union, types.UnionType) and any(own_parser(a) for a in args)


def problems(name: str, annotation: Any, default: Any) -> list[str]:
    """What is wrong with flag parameter `name` of type `annotation` and default `default`."""
    marker = flag_markers({name: annotation}).get(name)
    if marker is None:
        return [] if name in COMMAND_ONLY else [f"{name}: sets no config field and is not a command-only flag"]
    option = next(m for m in annotation.__metadata__ if isinstance(m, OptionInfo))
    flag_type = core(annotation)
    if marker.parse is not None:
        flag_type = core(typing.get_type_hints(marker.parse).get("return", flag_type))
    found = []
    for path in marker.paths:
        field = schema_field(path)
        if field is None:
            found.append(f"{name}: {path} is not a field of the run config")
            continue
        field_annotation, field_default, reads_text = field
        field_type, values = core(field_annotation), choices(core(field_annotation))
        if values and flag_type in (str, list[str]):
            found += [f"{name}: its help does not name {v!r}, a choice of {path}" for v in values
                      if str(v) not in (option.help or "")]
        elif flag_type != field_type and flag_type not in union_members(field_type) and not (flag_type is str and reads_text):
            found.append(f"{name}: the flag is {flag_type}, {path} is {field_type}")
        if default is False:  # a switch: given, it must change the field
            turned = marker.parse(True) if marker.parse is not None else True
            if flag_type is not bool or turned == field_default:
                found.append(f"{name}: a switch that leaves {path} at its default {field_default!r}")
        elif default is not None:
            found.append(f"{name}: defaults to {default!r}, not to 'not given' (None): it would override the config")
    for path, constant in marker.also.items():
        field = schema_field(path)
        if field is None:
            found.append(f"{name}: {path} (also set) is not a field of the run config")
        else:
            TypeAdapter(field[0]).validate_python(constant)
    return found


def train_flags() -> dict[str, tuple[Any, Any]]:
    return {name: (p.annotation, p.default) for name, p in inspect.signature(train, eval_str=True).parameters.items()
            if name != "model"}


def test_every_train_flag_matches_its_schema_field() -> None:
    found = [p for name, (annotation, default) in train_flags().items() for p in problems(name, annotation, default)]
    assert not found, "\n".join(found)
    assert set(train_flags()) - set(flag_markers(command_flags(train))) == COMMAND_ONLY


@pytest.mark.parametrize("name,annotation,default,says", [
    ("epochs", flag("--epochs", int, "Training", Sets("train.epoch")), None, "not a field"),
    ("epochs", flag("--epochs", float, "Training", Sets("train.epochs")), None, "the flag is <class 'float'>"),
    ("epochs", flag("--epochs", int, "Training", Sets("train.epochs")), 10, "would override the config"),
    ("schedule", flag("--schedule", str, "Optimizer", Sets("schedule.name"), "cosine or linear"), None,
     "does not name 'onecycle'"),
    ("momentum", flag("--momentum", float, "Optimizer", Sets("optim.momentum")), None, "not a field"),
    ("fast", flag("--fast", bool, "Training"), None, "sets no config field"),
    ("download", Annotated[bool, OptionInfo(), Sets("data.download", parse=lambda on: False)], False,
     "a switch that leaves data.download at its default"),
])
def test_a_drifted_flag_is_found(name: str, annotation: Any, default: Any, says: str) -> None:
    """The check itself: a wrong field, type or default, or a choice the help leaves out, is
    caught (momentum is SGD's and Muon's, not every optimizer's: no flag can set it)."""
    assert any(says in p for p in problems(name, annotation, default)), problems(name, annotation, default)


def test_the_model_flags_are_declared_once_for_summary_fit_and_train() -> None:
    for command in (summary, fit, train):
        assert set(MODEL_FLAGS) <= set(command_flags(command)), command.__name__
    assert set(DATA_FLAGS) - {"input_size"} <= set(command_flags(train))  # train's --input-size is the model's


def test_flags_make_the_overrides_their_markers_say() -> None:
    values = {"epochs": 3, "blocks": "2,2", "channels": "16,32", "input_size": 24, "no_cache": True, "download": False,
              "patience": 4, "optimizer": "adam", "log": ("tensorboard",), "set_values": ["optim.eps=0.001"]}
    over = config_overrides(values)
    assert over["train"] == {"epochs": 3, "early_stopping": {"patience": 4, "monitor": "val_acc"},
                             "log": ["tensorboard"]}
    assert over["model"] == {"preset": None, "blocks": [2, 2], "channels": [16, 32], "input_size": 24}
    assert over["data"] == {"input_size": 24, "cache": False} and over["optim"] == {"name": "adam", "eps": 0.001}
    cfg = load_config(overrides=over)  # the recipe's Muon settings give way to Adam's
    assert cfg.optim.name == "adam" and cfg.optim.eps == 0.001 and cfg.model.blocks == [2, 2]
    assert flag_overrides(MODEL_FLAGS, {"pool": "global", "stage_kinds": "residual, conv_pool"}) == {
        "model": {"pool": "global", "stage_kinds": ["residual", "conv_pool"]}}
    assert load_model_section({"preset": "flagship"}).blocks  # what --preset's SECTION_KEYS entry stands for
