"""Click options generated from config dataclasses, and their values mapped back to a config.

Each field of a config dataclass (nested ones too: `mutation.max_span`) becomes one option
whose help is the field's `metadata["help"]` and whose default is the field's default, so
both are written once, in the config. The option's type follows the field's annotation:
int, float and str as themselves, a `Literal` as a `click.Choice` of its values, a bool as a
flag (`--mh`; a field that defaults to True becomes `--no-NAME`, which turns it off), a
tuple of strings as a repeatable option, a tuple of numbers as one comma-separated option
(`--lambdas 0,0.1,1`), and `X | None` as X with no value by default.

An option is named after its field (`init_len` -> `--init-len`, `mutation.top_k` ->
`--top-k`); `names` renames the few whose CLI name differs and `short` adds short flags.
`toggles` makes a bool an `--x/--no-x` pair (for commands that always had both), and
`types` gives a field a click type of its own (e.g. an `IntRange` that keeps a count
inside SQLite's integers; on a tuple of strings, each repeated value's type). `unshown`
fields show no default (their help says what the default means, e.g. "the run's"). Fields
that need their own handling (the prompt, read from a file or unescaped) are `skip`ped and
given by the command itself. `ConfigOptions.values` turns click's keyword arguments back into
the nested dict of field values (what `RunConfig.from_dict` reads, or a flat config's keyword
arguments), with no code per option.
"""

from __future__ import annotations

import dataclasses
import re
import types as pytypes
import typing
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any, Literal, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class FieldOption:
    """One config field and the option made from it."""

    path: str  # dotted field path, e.g. "mutation.order"
    param: str  # click's parameter name: the path with "__" for "." (a valid identifier)
    decls: tuple[str, ...]  # option declarations, short ones first ("--x/--no-x" for a pair)
    attrs: dict[str, Any]  # click.option keyword arguments
    default: Any  # the field's default, as the config has it
    long: str  # the long option that sets a value (a pair's "--x"; a flag's only name)


def config_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """(dotted path, field, resolved type) of every leaf field, nested dataclasses walked."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            yield from config_fields(kind, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, kind


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"field {f.name} has no default, so it cannot be an option")


class ConfigOptions:
    """The options of one config class: a decorator for a click command, and the way back.

    ``@ConfigOptions(RunConfig, ...)`` adds the options in field order; in the command,
    ``options.values(kwargs)`` gives the nested dict of the config fields' values.
    """

    def __init__(
        self,
        cls: type,
        *,
        names: Mapping[str, str] | None = None,
        short: Mapping[str, str] | None = None,
        skip: Collection[str] = (),
        toggles: Collection[str] = (),
        types: Mapping[str, click.ParamType] | None = None,
        unshown: Collection[str] = (),
    ) -> None:
        names, short, types = dict(names or {}), dict(short or {}), dict(types or {})
        leaves = [(path, f, kind) for path, f, kind in config_fields(cls) if path not in skip]
        named = set(names) | set(short) | set(skip) | set(toggles) | set(types) | set(unshown)
        unknown = named - {p for p, _, _ in config_fields(cls)}
        if unknown:
            raise TypeError(f"{cls.__name__} has no field {sorted(unknown)[0]!r}")
        longs = {path: _long_name(path, f, names, path in toggles) for path, f, _ in leaves}
        self.options = [
            _make_option(
                path,
                f,
                kind,
                longs[path],
                short.get(path),
                longs,
                path in toggles,
                types.get(path),
                path in unshown,
            )
            for path, f, kind in leaves
        ]
        counts = Counter(o.long for o in self.options)
        clashes = sorted(long for long, n in counts.items() if n > 1)
        if clashes:
            raise TypeError(f"two fields make the option {clashes[0]}; rename one in `names`")

    def __call__(self, func: F) -> F:
        for option in reversed(self.options):  # click lists the last decorator applied first
            func = click.option(*option.decls, option.param, **option.attrs)(func)
        return func

    def values(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The nested dict of field values that click parsed into `kwargs`."""
        out: dict[str, Any] = {}
        for option in self.options:
            *parents, name = option.path.split(".")
            node = out
            for parent in parents:
                node = node.setdefault(parent, {})
            node[name] = kwargs[option.param]
        return out


def _long_name(path: str, f: dataclasses.Field, names: Mapping[str, str], toggle: bool) -> str:
    if path in names:
        return names[path]
    long = "--" + f.name.replace("_", "-")
    return f"--no-{long[2:]}" if field_default(f) is True and not toggle else long


def _make_option(
    path: str,
    f: dataclasses.Field,
    kind: Any,
    long: str,
    short: str | None,
    longs: Mapping[str, str],
    toggle: bool,
    own_type: click.ParamType | None,
    unshown: bool,
) -> FieldOption:
    text = f.metadata.get("help", "").strip()
    if not text:
        raise TypeError(f"config field {path} has no help in its metadata")
    text = _cli_names(text, longs)
    default = field_default(f)
    kind = _optional_of(kind)
    elements = typing.get_args(kind) if typing.get_origin(kind) is tuple else ()
    attrs: dict[str, Any]
    if toggle and kind is not bool:
        raise TypeError(f"config field {path} is no bool, so it cannot be an --x/--no-x pair")
    if kind is bool:
        if own_type is not None:
            raise TypeError(f"config field {path} is a flag; it takes no click type")
        if toggle:
            attrs = {"default": default}
            long = f"{long}/--no-{long[2:]}"
        else:
            if default:  # a flag can only turn a True default off
                text = f"Turn off the default: {text[0].lower()}{text[1:]}"
            attrs = {"is_flag": True, "flag_value": not default, "default": default}
    elif own_type is not None:
        attrs = {"type": own_type, "default": default}
        if elements == (str, Ellipsis):
            attrs["multiple"] = True  # repeatable, each value of the field's own type
    elif typing.get_origin(kind) is Literal:
        attrs = {"type": click.Choice(typing.get_args(kind)), "default": default}
    elif kind in (int, float, str):
        attrs = {"type": kind, "default": default}
    elif elements == (str, Ellipsis):
        attrs = {"type": str, "multiple": True, "default": default}  # repeatable option
    elif len(elements) == 2 and elements[0] in (int, float) and elements[1] is Ellipsis:
        # Shown and parsed as written on the command line: 0,0.1,1.
        shown = None if default is None else NumberList.format(default)
        attrs = {"type": NumberList(elements[0]), "default": shown}
    else:
        raise TypeError(f"no option type for config field {path} ({kind})")
    if not attrs.get("is_flag") and not attrs.get("multiple") and not unshown:
        attrs["show_default"] = True
    attrs["help"] = text
    decls = (short, long) if short else (long,)
    return FieldOption(path, path.replace(".", "__"), decls, attrs, default, longs[path])


def _optional_of(kind: Any) -> Any:
    """X for `X | None` (the option then has no value unless given); any other type as is."""
    if typing.get_origin(kind) in (typing.Union, pytypes.UnionType):
        rest = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return kind


class NumberList(click.ParamType):
    """Comma-separated numbers (`0,0.1,1`) as a tuple; blanks between commas are ignored."""

    name = "numbers"

    def __init__(self, number: type[int] | type[float]) -> None:
        self.number = number

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return f"{self.number.__name__.upper()},..."

    @staticmethod
    def format(values: Iterable[float]) -> str:
        """The numbers as an option value: short (`1`, not `1.0`) where that reads back exactly."""
        return ",".join(f"{x:g}" if float(f"{x:g}") == x else repr(x) for x in values)

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[float, ...]:
        if isinstance(value, tuple):  # already converted (a default given as the tuple)
            return value
        parts = [p.strip() for p in str(value).split(",") if p.strip()]
        if not parts:
            self.fail(f"no numbers in {value!r}; give e.g. 0,0.1,0.5", param, ctx)
        try:
            return tuple(self.number(p) for p in parts)
        except ValueError:
            kind = "integers" if self.number is int else "numbers"
            self.fail(f"must be comma-separated {kind}, got {value!r}", param, ctx)


def _cli_names(text: str, longs: Mapping[str, str]) -> str:
    """Write a field that the help names in backticks (`init_len`) as its option."""
    by_name = {path.rsplit(".", 1)[-1]: long for path, long in longs.items()}

    def option(match: re.Match[str]) -> str:
        name = match.group(1)
        return longs.get(name) or by_name.get(name) or name

    return re.sub(r"`([a-z_.]+)`", option, text)
