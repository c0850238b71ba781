"""Config checks that run before anything is built, and list-item overrides on the command line.

A recipe declares every key it reads in one dict (its ``CONFIG_SPEC``) and calls
``check_config(cfg, CONFIG_SPEC)`` first thing: unknown keys, missing keys and wrong scalar types
anywhere in the config fail together in ONE ``ValueError`` that names each full dotted key, the
value and what is accepted, before the data set or the model is built. What a spec entry means:

- a type or type expression (``int``, ``float``, ``str | None``, ``Literal["cpu", "cuda"]``,
  ``list[str] | None``, ``Annotated[int, AtLeast(1)]``): the value must match it;
- a dict: a plain config section whose keys are exactly the dict's keys, each checked recursively;
- ``Component(...)``: a ``_component_`` section. Its keys are checked against the target's
  signature (the parameters the recipe passes itself are excluded; a builder that forwards
  ``**kwargs`` declares where to with ``forwards_kwargs_to``), each value against the parameter's
  annotation, and a required parameter without a value is reported missing;
- ``[Component(...)]``: a list of such sections (e.g. ``rewards``).

Type rules: ``float`` accepts ints, no number accepts a bool, ``str``/``Path`` accept strings only,
``Sequence[...]``/``list[...]`` accept YAML lists, ``Mapping``/``dict`` accept YAML mappings. An
annotation the checker cannot interpret (a class, a callable) is not checked; a nested
``_component_`` value is checked as a component.

List items: torchtune's ``key=value`` overrides cannot reach into lists (``rewards.4.target_words=3``
fails with "Cannot merge incompatible container types"). ``expand_list_item_overrides(argv)``, which
every recipe calls on ``sys.argv`` before torchtune parses it, turns ``a.N.key=value``,
``a.N=value`` (a string replaces a component's ``_component_``), ``~a.N`` and ``~a.N.key`` into one
whole-list override ``a=[...]`` holding the edited list.
"""

from __future__ import annotations

import collections.abc
import importlib
import inspect
import json
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

COMPONENT_KEY = "_component_"


# --------------------------------------------------------------------------------------------
# Spec vocabulary


@dataclass(frozen=True)
class Component:
    """A ``_component_`` config section.

    Args:
        positional: how many leading parameters of the target the recipe passes positionally
            (e.g. 1 for a data set builder called with the tokenizer).
        keywords: keyword parameters the recipe passes itself (e.g. ``("dtype", "device")``).
        optional: the whole section may be ``null``.
    """

    positional: int = 0
    keywords: tuple[str, ...] = ()
    optional: bool = False


@dataclass(frozen=True)
class AtLeast:
    """``Annotated[int, AtLeast(1)]``: the number must be >= ``minimum``."""

    minimum: float

    def problem(self, value: Any) -> str | None:
        return None if value >= self.minimum else f"must be >= {self.minimum:g}"


@dataclass(frozen=True)
class Above:
    """``Annotated[float, Above(0)]``: the number must be > ``bound``."""

    bound: float

    def problem(self, value: Any) -> str | None:
        return None if value > self.bound else f"must be > {self.bound:g}"


def forwards_kwargs_to(target: Callable) -> Callable[[Callable], Callable]:
    """Mark a builder whose ``**kwargs`` go to ``target``: its keyword parameters become accepted keys."""

    def mark(fn: Callable) -> Callable:
        fn.__kwargs_target__ = target
        return fn

    return mark


# --------------------------------------------------------------------------------------------
# Checking


def check_config(cfg: collections.abc.Mapping, spec: dict[str, Any], what: str = "config") -> None:
    """Check a resolved config against a recipe's spec (module docstring); raise one ``ValueError``.

    Args:
        cfg: the config as plain containers (``OmegaConf.to_container(cfg, resolve=True)``) or a
            ``DictConfig``.
        spec: the recipe's ``CONFIG_SPEC``.
        what: how the error message names the config.

    Raises:
        ValueError: listing every problem, one per line, each naming the full dotted key.
    """
    problems: list[str] = []
    _check_section(plain_config(cfg), spec, "", problems)
    if problems:
        raise ValueError(
            f"{what}: {len(problems)} problem{'s' if len(problems) > 1 else ''} (nothing was built):\n  "
            + "\n  ".join(problems)
        )


def plain_config(value: Any) -> Any:
    """Plain dicts/lists of a DictConfig (interpolations resolved), values as they are otherwise."""
    if hasattr(value, "_metadata") and hasattr(value, "_get_node"):  # an OmegaConf container
        from omegaconf import OmegaConf  # only ever reached from a recipe (torchtune brings omegaconf)

        return OmegaConf.to_container(value, resolve=True)
    return value


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _check_section(cfg: Any, spec: dict[str, Any], prefix: str, problems: list[str]) -> None:
    if not isinstance(cfg, collections.abc.Mapping):
        problems.append(f"{prefix or 'config'}: {_show(cfg)} is not a section (expected keys {sorted(spec)})")
        return
    for key in sorted(set(cfg) - set(spec), key=str):
        problems.append(f"{_join(prefix, key)}: unknown key; {prefix or 'the config'} accepts {', '.join(sorted(spec))}")
    for key in sorted(set(spec) - set(cfg), key=str):
        problems.append(f"{_join(prefix, key)}: missing (expected {_describe(spec[key])})")
    for key in sorted(set(spec) & set(cfg), key=str):
        _check_entry(cfg[key], spec[key], _join(prefix, key), problems)


def _check_entry(value: Any, spec: Any, key: str, problems: list[str]) -> None:
    if isinstance(spec, dict):
        _check_section(value, spec, key, problems)
    elif isinstance(spec, Component):
        if value is None and spec.optional:
            return
        _check_component(value, spec, key, problems)
    elif isinstance(spec, list):
        (item_spec,) = spec
        if not isinstance(value, list):
            problems.append(f"{key}: {_show(value)} is not a list")
            return
        for i, item in enumerate(value):
            _check_entry(item, item_spec, f"{key}.{i}", problems)
    else:
        problem = _type_problem(value, spec)
        if problem:
            problems.append(f"{key}: {_show(value)} {problem}")


def _check_component(value: Any, spec: Component, key: str, problems: list[str]) -> None:
    if not isinstance(value, collections.abc.Mapping) or COMPONENT_KEY not in value:
        problems.append(f"{key}: {_show(value)} is not a `_component_` section")
        return
    path = value[COMPONENT_KEY]
    try:
        target = import_component(path)
    except (ImportError, AttributeError, ValueError) as err:
        problems.append(f"{key}._component_: cannot import {path!r} ({err})")
        return
    params, takes_any = accepted_parameters(target, spec.positional, spec.keywords)
    kwargs = {k: v for k, v in value.items() if k != COMPONENT_KEY}
    for name in sorted(set(kwargs) & set(spec.keywords)):
        problems.append(f"{key}.{name}: set by the recipe, remove it from the config")
    if not takes_any:
        for name in sorted(set(kwargs) - set(params) - set(spec.keywords)):
            problems.append(
                f"{key}.{name}: unknown key; {path} accepts {', '.join(sorted(params)) or 'no keys'}"
            )
    for name, param in params.items():
        if name not in kwargs:
            if param.default is inspect.Parameter.empty:
                problems.append(f"{key}.{name}: missing (required by {path})")
            continue
        sub = kwargs[name]
        if isinstance(sub, collections.abc.Mapping) and COMPONENT_KEY in sub:
            _check_component(sub, Component(), f"{key}.{name}", problems)
            continue
        problem = _type_problem(sub, param.annotation)
        if problem:
            problems.append(f"{key}.{name}: {_show(sub)} {problem} ({path} takes {name}: {_describe(param.annotation)})")


def import_component(path: str) -> Any:
    """The object a ``_component_`` path names (``package.module.attr[.attr]``), imported."""
    if not isinstance(path, str) or not path or path.startswith(".") or ".." in path:
        raise ValueError(f"not a dotted path: {path!r}")
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            missing = err.name or ""
            if " moved to " not in str(err) and (missing == module_name or module_name.startswith(missing + ".")):
                continue  # not a module: try a shorter prefix (attributes of a module)
            raise
        for attr in parts[split:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"no importable module in {path!r}")


def accepted_parameters(
    target: Callable, positional: int = 0, keywords: tuple[str, ...] = ()
) -> tuple[dict[str, inspect.Parameter], bool]:
    """The keyword parameters a config may set for ``target`` (annotations resolved), and whether
    it also takes arbitrary keys (``**kwargs`` not declared with ``forwards_kwargs_to``).

    Args:
        target: a function or class.
        positional: leading parameters the recipe passes positionally (excluded).
        keywords: parameters the recipe passes by keyword (excluded).
    """
    fn = target.__init__ if inspect.isclass(target) else target
    signature = inspect.signature(target)
    hints = _type_hints(fn)
    params: dict[str, inspect.Parameter] = {}
    takes_any = False
    skip = positional
    own = set(signature.parameters)
    for param in signature.parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            forwarded = getattr(target, "__kwargs_target__", None)
            if forwarded is None:
                takes_any = True
            else:
                inner, inner_any = accepted_parameters(forwarded, 0, ())
                takes_any = takes_any or inner_any
                for name, inner_param in inner.items():
                    # The builder fills its own parameters and the target's required ones itself.
                    if name not in own and inner_param.default is not inspect.Parameter.empty:
                        params[name] = inner_param
            continue
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        if skip and param.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            skip -= 1
            continue
        if param.kind is inspect.Parameter.POSITIONAL_ONLY or param.name in keywords:
            continue
        params[param.name] = param.replace(annotation=hints.get(param.name, param.annotation))
    # Forwarded parameters the builder fills itself positionally are not config keys.
    for name in keywords:
        params.pop(name, None)
    return params, takes_any


def _type_hints(fn: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:  # a name only imported for type checking: check what can be resolved
        hints = {}
        namespace = getattr(fn, "__globals__", {})
        for name, annotation in getattr(fn, "__annotations__", {}).items():
            try:
                hints[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation  # noqa: S307
            except Exception:
                hints[name] = inspect.Parameter.empty
        return hints


# --------------------------------------------------------------------------------------------
# Type matching

_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.Iterable, collections.abc.Collection)
_MAPPINGS = (dict, collections.abc.Mapping)


def _type_problem(value: Any, annotation: Any) -> str | None:
    """None when ``value`` fits ``annotation`` (or the annotation cannot be interpreted), else a reason."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        for arm in args:  # the first arm the value fits decides (its constraints included)
            if _matches(value, arm) is True:
                return _type_problem(value, arm)
    elif origin is typing.Annotated:
        problem = _type_problem(value, args[0])
        for check in args[1:]:
            problem = problem or (check.problem(value) if hasattr(check, "problem") else None)
        return problem
    return f"is not {_describe(annotation)}" if _matches(value, annotation) is False else None


def _matches(value: Any, annotation: Any) -> bool | None:
    """True / False, or None when the annotation is not something the checker interprets."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _matches(value, args[0])
    if origin is typing.Union or origin is types.UnionType:
        results = [_matches(value, arg) for arg in args]
        return True if True in results else (None if None in results else False)
    if origin is typing.Literal:
        return value in args
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str or annotation in (Path, os.PathLike):
        return isinstance(value, str)
    container = origin if origin is not None else annotation
    if container in _SEQUENCES:
        if not isinstance(value, list):
            return False
        item = args[0] if args and (container is not tuple or len(args) == 2 and args[1] is Ellipsis) else None
        if item is None:
            return True
        results = [_matches(v, item) for v in value]
        return False if False in results else True
    if container in _MAPPINGS:
        return isinstance(value, dict)
    if isinstance(value, dict) and COMPONENT_KEY in value:
        return None  # a nested component: checked as such by the caller
    if inspect.isclass(annotation):
        return True if isinstance(value, annotation) else None
    return None


def _describe(annotation: Any) -> str:
    """Readable text for a spec entry or annotation."""
    if isinstance(annotation, Component):
        return "a `_component_` section" + (" or null" if annotation.optional else "")
    if isinstance(annotation, dict):
        return f"a section with keys {', '.join(sorted(annotation))}"
    if isinstance(annotation, list):
        return f"a list of {_describe(annotation[0])}"
    if annotation is inspect.Parameter.empty:
        return "any value"
    if annotation is None or annotation is type(None):
        return "null"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        extra = ", ".join(repr(a) for a in args[1:])
        return f"{_describe(args[0])} ({extra})"
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    names = {bool: "a bool", int: "an int", float: "a number", str: "a string", Path: "a path string"}
    if annotation in names:
        return names[annotation]
    container = origin if origin is not None else annotation
    if container in _SEQUENCES:
        return "a list" + (f" of {_describe(args[0])}" if args and args[0] is not Ellipsis else "")
    if container in _MAPPINGS:
        return "a mapping"
    return getattr(annotation, "__name__", str(annotation))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------------------------
# List-item overrides


def expand_list_item_overrides(argv: list[str]) -> list[str]:
    """Rewrite overrides that index into a YAML list into one whole-list override (module docstring).

    Args:
        argv: ``sys.argv`` of a recipe: ``[script, ..., "--config", path, overrides...]``.

    Returns:
        A new argv; unchanged when no override indexes into a list.

    Raises:
        ValueError: an index out of range, or a key that does not exist in that list item's path.
    """
    if "--config" not in argv or argv.index("--config") + 1 >= len(argv):
        return list(argv)
    config_path = argv[argv.index("--config") + 1]
    if not os.path.isfile(config_path):
        return list(argv)
    from omegaconf import OmegaConf  # only ever called from a recipe (torchtune brings omegaconf)

    node = OmegaConf.to_container(OmegaConf.load(config_path), resolve=False)
    edited: dict[str, list] = {}
    out: list[str] = []
    for arg in argv:
        target = _list_item_target(node, arg)
        if target is None:
            out.append(arg)
            continue
        list_key, items, rest = target
        items = edited.setdefault(list_key, items)
        _edit_list(items, rest, arg, list_key)
    for list_key, items in edited.items():
        text = json.dumps(items)
        if "=" in text:
            raise ValueError(
                f"cannot rewrite the overrides of {list_key} into one command-line value: the edited list "
                f"contains '=' (torchtune splits overrides at '='); copy the config and edit it instead"
            )
        out.append(f"{list_key}={text}")
    return out


def _list_item_target(node: Any, arg: str) -> tuple[str, list, list[str]] | None:
    """``(dotted key of the list, a copy of the list, [index, keys...])`` if ``arg`` indexes into a list."""
    if arg.startswith("--") or ("=" not in arg and not arg.startswith("~")):
        return None
    key = arg[1:] if arg.startswith("~") else arg.split("=", 1)[0]
    parts = key.split(".")
    current, walked = node, []
    for i, part in enumerate(parts):
        if isinstance(current, list):
            if not part.lstrip("-").isdigit():
                return None
            return ".".join(walked), json.loads(json.dumps(current)), parts[i:]
        if not isinstance(current, dict) or part not in current:
            return None
        current, walked = current[part], walked + [part]
    return None


def _edit_list(items: list, rest: list[str], arg: str, list_key: str) -> None:
    index = int(rest[0])
    if not 0 <= index < len(items):
        raise ValueError(f"override {arg!r}: {list_key} has {len(items)} items (indices 0..{len(items) - 1})")
    remove = arg.startswith("~")
    if len(rest) == 1:
        if remove:
            items.pop(index)
            return
        value = _parse_value(arg.split("=", 1)[1])
        if isinstance(items[index], dict) and COMPONENT_KEY in items[index] and isinstance(value, str):
            items[index][COMPONENT_KEY] = value  # like torchtune's `model=path.to.Builder`
        else:
            items[index] = value
        return
    holder = items[index]
    for part in rest[1:-1]:
        if not isinstance(holder, dict) or part not in holder:
            raise ValueError(f"override {arg!r}: {list_key}.{index} has no key {part!r}")
        holder = holder[part]
    if not isinstance(holder, dict):
        raise ValueError(f"override {arg!r}: {'.'.join([list_key, *rest[:-1]])} is not a section")
    if remove:
        if rest[-1] not in holder:
            raise ValueError(f"override {arg!r}: there is no key {rest[-1]!r} to remove")
        del holder[rest[-1]]
    else:
        holder[rest[-1]] = _parse_value(arg.split("=", 1)[1])


def _parse_value(text: str) -> Any:
    """A command-line value as OmegaConf reads it (YAML; ``None`` means null, as in torchtune)."""
    if text == "None":
        return None
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.from_dotlist([f"v={text}"]))["v"]
