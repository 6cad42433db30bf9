"""Configuration: a thin, strict layer over fastargs.

Declare sections with `Section(name, desc).params(key=Param(checker, desc, default=...))`, read values with
`@param("section.key")` on functions and methods (or `get_value`), and fill them with `load_config()`:
defaults < `config=` mapping < `-C/--config-file` files (YAML or JSON, in order) < `--section.key value`.

What this module fixes in fastargs 1.2.0:
- `Bool` parses "false"/"0"/"no"/"off" as False (fastargs's `bool("false")` is True);
- a flag set in a config file is not reset to False by the command line;
- unknown keys (file or CLI) are errors with a close-match suggestion, not silently ignored;
- validation errors name key, value, expected type and source, and exit with code 2 (fastargs exits 0);
- `@param` functions keep their name, docstring and signature, work on methods and pickle;
- `argv` is a parameter (fastargs always reads `sys.argv`), environment variables are not collected.
"""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import fastargs
import fastargs.validation as fv
from fastargs import Section
from fastargs.state import get_current_config, set_current_config
from fastargs.validation import Checker, ImportedObject, InRange, Module
from terminaltables import AsciiTable

__all__ = [
    "Section", "Param", "Checker", "ConfigError", "Config",
    "Anything", "Bool", "Int", "Float", "Str", "OneOf", "And", "Or", "InRange", "Module", "ImportedObject",
    "Dict", "ListOf", "ListOfInt", "ListOfFloat", "ListOfStr", "Optional", "OptionalInt", "OptionalFloat",
    "OptionalStr", "File", "Folder",
    "param", "section", "load_config", "set_values", "get_value", "get_config", "config_as_dict",
    "reset_config",
]

F = TypeVar("F", bound=Callable[..., Any])
Key = tuple[str, ...]
NONE_WORDS = ("none", "null")


class ConfigError(ValueError):
    """A bad, missing or unknown config value; the message says which key, what was given, what was expected."""


# ----------------------------------------------------------------------------------------------------------
# checkers (fastargs's `Checker` interface: `check(value) -> converted value`, `help() -> str`)

class Anything(fv.Anything):
    """Any value. A string that looks like JSON/YAML (`{...}` or `[...]`) is decoded: `--a.b '{"x": 1}'`."""

    def check(self, value: Any) -> Any:
        if isinstance(value, str) and value.strip()[:1] in ("{", "["):
            try:
                return _decode_text(value)
            except ValueError:
                return value
        return copy.deepcopy(value)

    def help(self) -> str:
        return "anything"


class Bool(fv.Bool):
    """A real bool, or true/false, 1/0, yes/no, on/off in any case."""

    TRUE = ("true", "1", "yes", "on")
    FALSE = ("false", "0", "no", "off")

    def check(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            word = value.strip().lower()
            if word in self.TRUE:
                return True
            if word in self.FALSE:
                return False
        raise ValueError(f"not a boolean: {value!r}")

    def help(self) -> str:
        return "a boolean (true/false, 1/0, yes/no, on/off)"


class Int(fv.Int):
    """An int; integer strings ("3") and integral floats (3.0, "1e3") are accepted, 3.5 and True are not."""

    def check(self, value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("a bool is not an int")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                value = float(value)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise ValueError(f"not an int: {value!r}")

    def help(self) -> str:
        return "an int"


class Float(fv.Float):
    """A float; ints and numeric strings ("1e-3") are accepted, bools are not."""

    def check(self, value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError("a bool is not a float")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
        raise ValueError(f"not a float: {value!r}")

    def help(self) -> str:
        return "a float"


class Str(fv.Str):
    """A string; numbers are converted (`version: 1.0` in YAML gives "1.0"), bools and containers are not."""

    def check(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"not a string: {value!r}")

    def help(self) -> str:
        return "a string"


class OneOf(fv.OneOf):
    """One of the given values (order kept for the help); "3" matches the choice 3 (CLI values are strings)."""

    def __init__(self, possible_values: Iterable[Any]):
        self.choices = list(possible_values)
        self.possible_values = self.choices

    def check(self, value: Any) -> Any:
        for choice in self.choices:
            if value == choice and type(value) is type(choice):
                return choice
        if isinstance(value, str):
            for choice in self.choices:
                if str(choice) == value:
                    return choice
        raise ValueError(f"not one of {self.choices}: {value!r}")

    def help(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)


class And(fv.And):
    """Passes every checker in turn, each on the previous result: `And(float, InRange(0, 1))`."""

    def __init__(self, *checkers: Any):
        self.checkers = [_as_checker(c) for c in checkers]


class Or(fv.Or):
    """The result of the first checker that accepts the value."""

    def __init__(self, *checkers: Any):
        self.checkers = [_as_checker(c) for c in checkers]


class Dict(Checker):
    """A mapping; on the CLI a JSON object (`'{"margin": 0.1}'`) or YAML flow mapping (`'{margin: 0.1}'`)."""

    def check(self, value: Any) -> dict:
        if isinstance(value, str):
            value = _decode_text(value) if value.strip() else {}
        if not isinstance(value, Mapping):
            raise ValueError(f"not a mapping: {value!r}")
        return copy.deepcopy(dict(value))

    def help(self) -> str:
        return "a mapping (JSON object on the CLI)"


class ListOf(Checker):
    """A list whose items pass `checker`; on the CLI a JSON list ("[1, 2]") or comma-separated ("1,2")."""

    def __init__(self, checker: Any = None):
        self.checker = Anything() if checker is None else _as_checker(checker)

    def check(self, value: Any) -> list:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = _decode_text(text)
            else:
                value = [item.strip() for item in text.split(",")] if text else []
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"not a list: {value!r}")
        return [self.checker.check(item) for item in value]

    def help(self) -> str:
        return f"a list of ({self.checker.help()})"


class ListOfInt(ListOf):
    def __init__(self):
        super().__init__(Int())


class ListOfFloat(ListOf):
    def __init__(self):
        super().__init__(Float())


class ListOfStr(ListOf):
    def __init__(self):
        super().__init__(Str())


class Optional(Checker):
    """None (also the strings "none"/"null", any case) or a value passing `checker`."""

    def __init__(self, checker: Any):
        self.checker = _as_checker(checker)

    def check(self, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in NONE_WORDS):
            return None
        return self.checker.check(value)

    def help(self) -> str:
        return f"{self.checker.help()} or none"


class OptionalInt(Optional):
    """An int or None (seeds: `int | None`)."""

    def __init__(self):
        super().__init__(Int())


class OptionalFloat(Optional):
    def __init__(self):
        super().__init__(Float())


class OptionalStr(Optional):
    def __init__(self):
        super().__init__(Str())


class File(Checker):
    """Path of an existing file (returned as a string, so the config stays JSON-serialisable)."""

    def check(self, value: Any) -> str:
        if not isinstance(value, (str, os.PathLike)) or not os.path.isfile(value):
            raise ValueError(f"not an existing file: {value!r}")
        return os.fspath(value)

    def help(self) -> str:
        return "path of an existing file"


class Folder(Checker):
    """Path of a folder (returned as a string); `must_exist=False` accepts a folder still to be created."""

    def __init__(self, must_exist: bool = True):
        self.must_exist = must_exist

    def check(self, value: Any) -> str:
        if not isinstance(value, (str, os.PathLike)) or (self.must_exist and not os.path.isdir(value)):
            raise ValueError(f"not an existing folder: {value!r}")
        return os.fspath(value)

    def help(self) -> str:
        return "path of an existing folder" if self.must_exist else "path of a folder"


PYTHON_TYPES: dict[Any, Callable[[], Checker]] = {
    bool: Bool, int: Int, float: Float, str: Str, dict: Dict, list: ListOf, Any: Anything,
}


def _as_checker(checker: Any) -> Checker:
    """A checker instance for `checker`: a Checker, a checker class, or a Python type (int, bool, dict, ...)."""
    if isinstance(checker, Checker):
        return _fix_fastargs_checker(checker)
    if checker in PYTHON_TYPES:
        return PYTHON_TYPES[checker]()
    if isinstance(checker, type) and issubclass(checker, Checker):
        return checker()
    raise TypeError(f"invalid checker {checker!r}: use a Checker (Int(), Bool(), ...) or one of "
                    f"{', '.join(getattr(t, '__name__', str(t)) for t in PYTHON_TYPES)}")


def _fix_fastargs_checker(checker: Checker) -> Checker:
    """Swap fastargs's lenient basic checkers (bool("false") is True, int(3.7) is 3) for ours."""
    plain = {fv.Bool: Bool, fv.Int: Int, fv.Float: Float, fv.Str: Str, fv.Anything: Anything}
    if type(checker) in plain:
        return plain[type(checker)]()
    if type(checker) is fv.OneOf:
        return OneOf(sorted(checker.possible_values, key=str))
    return checker


def _decode_text(text: str) -> Any:
    """Decode a JSON (or YAML flow) string, e.g. a mapping given on the command line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    import yaml
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"neither JSON nor YAML: {text!r}") from e


class Param(fastargs.Param):
    """A config parameter: `Param(checker, desc, default=None, required=False, is_flag=False)`.

    `checker` is a Checker (`Float()`, `OneOf([...])`) or a type (`float`, `bool`, `dict`, `list`).
    A param with `default=None` and `required=False` is optional: its value may be None.
    """

    def __init__(self, checker: Any, desc: str = "", default: Any = None, required: bool = False,
                 is_flag: bool = False):
        super().__init__(Anything(), desc, default, required, is_flag)
        self.checker = _as_checker(checker)


# ----------------------------------------------------------------------------------------------------------
# the config state

def _key(key: str | Key) -> Key:
    return tuple(key.split(".")) if isinstance(key, str) else tuple(key)


def _name(key: Key) -> str:
    return ".".join(key)


class Config(fastargs.Config):
    """fastargs's Config with strict values: `content` holds given values, `sources` where each came from."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[Key, Section] = {}  # a plain dict (fastargs's lambda defaultdict cannot pickle)
        self.sources: dict[Key, str] = {}

    # declarations: re-declaring a section or param replaces it (last declaration wins)
    def add_entry(self, ns: Key, name: str, param: fastargs.Param) -> None:
        path = ns + tuple(name.split("."))
        param.checker = _as_checker(param.checker)
        if path not in self.sections_to_entries[ns]:
            self.sections_to_entries[ns].append(path)
        self.entries[path] = param

    def suggest(self, key: Key) -> str:
        names = [_name(k) for k in self.entries]
        close = difflib.get_close_matches(_name(key), names, n=1, cutoff=0.6)
        return f"; did you mean '{close[0]}'?" if close else ""

    def param_of(self, key: str | Key) -> fastargs.Param:
        path = _key(key)
        if path not in self.entries:
            raise ConfigError(f"unknown config key '{_name(path)}'{self.suggest(path)}")
        return self.entries[path]

    # values
    def set_value(self, key: str | Key, value: Any, source: str) -> None:
        path = _key(key)
        self.param_of(path)
        self.content[path] = value
        self.sources[path] = source

    def collect(self, config: Mapping, source: str = "set_values") -> "Config":
        """Set every value of a nested (or dotted) mapping, unvalidated; unknown keys are a ConfigError."""
        self.collect_paths(config, source)
        return self

    def collect_paths(self, config: Mapping, source: str) -> list[Key]:
        """`collect`, returning the keys it set."""
        errors: list[str] = []
        paths = []
        for path, value in self._flatten(config, (), source, errors):
            self.set_value(path, value, source)
            paths.append(path)
        if errors:
            raise ConfigError("\n".join(errors))
        return paths

    def _flatten(self, tree: Any, prefix: Key, source: str, errors: list[str]) -> Iterator[tuple[Key, Any]]:
        if not isinstance(tree, Mapping):
            raise ConfigError(f"{source}: expected a mapping {{section: {{param: value}}}}, got {tree!r}")
        for name, value in tree.items():
            path = prefix + tuple(str(name).split("."))
            if path in self.entries:
                yield path, value
            elif isinstance(value, Mapping) and value:  # a section (or a typo of one: report its leaves)
                yield from self._flatten(value, path, source, errors)
            else:
                errors.append(f"unknown config key '{_name(path)}' ({source}){self.suggest(path)}")

    def collect_config_file(self, fname: str | os.PathLike) -> "Config":
        return self.collect(read_config_file(fname), source=f"in {os.fspath(fname)}")

    def collect_argparse_args(self, parser: Any, disable_help: bool = False) -> "Config":
        raise NotImplementedError("use torchstrap_runtime.config.load_config(argv)")

    def augment_argparse(self, parser: Any) -> "Config":
        raise NotImplementedError("use torchstrap_runtime.config.load_config(argv)")

    def collect_env_variables(self) -> "Config":
        raise NotImplementedError("environment variables are not read; use load_config(argv)")

    def clear_values(self) -> None:
        self.content.clear()
        self.sources.clear()

    def is_enabled(self, key: str | Key) -> bool:
        param = self.param_of(key)
        return param.section is None or param.section.is_enabled(self)

    def __getitem__(self, key: str | Key) -> Any:
        """The validated value of `key` (None for a disabled section); ConfigError when bad or missing."""
        path = _key(key)
        param = self.param_of(path)
        if not self.is_enabled(path):
            return None
        given = path in self.content
        value = self.content[path] if given else param.default
        where = f" ({self.sources.get(path, 'given')})" if given else " (the default)"
        if value is None:
            if param.required:
                raise ConfigError(f"{_name(path)}: missing required value, expected {param.checker.help()}"
                                  f"{': ' + param.desc if param.desc else ''}")
            return None
        try:
            return param.checker.check(value)
        except Exception as e:
            raise ConfigError(f"{_name(path)}: got {value!r}, expected {param.checker.help()}{where}") from e

    def error_dict(self) -> dict[Key, str]:
        """{key: one-sentence problem} for every bad or missing value."""
        errors = {}
        for path in self.entries:
            try:
                self[path]
            except ConfigError as e:
                errors[path] = str(e)
        return errors

    def errors(self) -> list[str]:
        return list(self.error_dict().values())

    def validate(self, mode: str = "stderr") -> Any:
        """mode='stderr': print the errors and exit 2; 'raise': ConfigError; 'errordict': {key: message}."""
        errors = self.error_dict()
        if mode == "errordict":
            return errors
        if errors and mode == "stderr":
            _fail(list(errors.values()))
        if errors:
            raise ConfigError("\n".join(errors.values()))
        return None

    def as_dict(self) -> dict:
        result: dict = {}
        for path in self.entries:
            if not self.is_enabled(path):
                continue
            node = result
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = _jsonable(self[path], self.content.get(path, self.entries[path].default))
        return result

    def help_text(self, prog: str, description: str) -> str:
        lines = [f"usage: {prog} [-h] [-C CONFIG_FILE ...] [--section.param VALUE ...]", ""]
        if description:
            lines += [description, ""]
        lines += ["-C, --config-file PATH  YAML (.yaml/.yml) or JSON (.json) file {section: {param: value}};"
                  " repeatable, later files win",
                  "--section.param VALUE   set one value (wins over files); a bare --flag means true",
                  "-h, --help              show this help", ""]
        for ns, paths in self.sections_to_entries.items():
            rows = [["Name", "Default", "Constraint", "Description"]]
            for path in paths:
                p = self.entries[path]
                default = "required" if p.required and p.default is None else repr(p.default)
                rows.append([_name(path), default, p.checker.help(), p.desc])
            section_obj = self.sections.get(ns)
            title = f" {_name(ns)}: {section_obj.desc} " if section_obj is not None and section_obj.desc else None
            lines += [AsciiTable(rows, title).table, ""]
        return "\n".join(lines)


def _jsonable(value: Any, raw: Any) -> Any:
    """`value` if JSON-serialisable, else the raw given value (e.g. a module path), else its str()."""
    for candidate in (value, raw):
        try:
            json.dumps(candidate)
            return candidate
        except (TypeError, ValueError):
            continue
    return str(value)


def _fail(errors: list[str]) -> None:
    for error in errors:
        print(f"config error: {error}", file=sys.stderr)
    raise SystemExit(2)


def read_config_file(fname: str | os.PathLike) -> dict:
    """The mapping in a YAML (.yaml/.yml) or JSON (.json) config file; ConfigError naming the file if bad."""
    path = Path(fname)
    if not path.is_file():
        raise ConfigError(f"config file not found: '{path}'" + (" (it is a folder)" if path.is_dir() else ""))
    suffix = path.suffix.lower()
    text = path.read_text()
    try:
        if suffix == ".json":
            data = json.loads(text) if text.strip() else {}
        elif suffix in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"config file '{path}': unknown extension '{suffix}', use .yaml, .yml or .json")
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"config file '{path}' could not be parsed: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file '{path}': expected a mapping {{section: {{param: value}}}} at the top,"
                          f" got {type(data).__name__}")
    return dict(data)


def get_config() -> Config:
    """The global Config (fastargs's current config, made a torchstrap Config if needed)."""
    config = get_current_config()
    if not isinstance(config, Config):
        config = _adopt(config)
    return config


def _adopt(old: fastargs.Config) -> Config:
    """Replace a plain fastargs Config by ours, keeping what was declared in it."""
    new = Config()
    for ns, section_obj in old.sections.items():
        if section_obj is not None:
            section_obj.config_descriptor = new
            new.add_section(section_obj)
    for ns, paths in old.sections_to_entries.items():
        for path in paths:
            new.add_entry(ns, _name(path[len(ns):]), old.entries[path])
    for path, value in old.content.items():
        new.content[path] = value
        new.sources[path] = "fastargs"
    set_current_config(new)
    return new


def reset_config(keep_sections: bool = False) -> Config:
    """A fresh global config: no values, and no sections unless `keep_sections` (then only values go)."""
    if keep_sections:
        config = get_config()
        config.clear_values()
        return config
    config = Config()
    set_current_config(config)
    return config


def get_value(key: str) -> Any:
    """The validated value of `key` ("section.param"); ConfigError if unknown, missing or bad."""
    return get_config()[key]


def set_values(mapping: Mapping, source: str = "set_values") -> None:
    """Set values from a nested `{section: {param: value}}` or dotted `{"section.param": value}` mapping.

    Unknown keys and invalid values raise ConfigError (nothing is set when a key is unknown or invalid).
    """
    config = get_config()
    saved = (dict(config.content), dict(config.sources))
    try:
        bad = []
        for path in config.collect_paths(mapping, source):
            try:
                config[path]
            except ConfigError as e:
                bad.append(str(e))
        if bad:
            raise ConfigError("\n".join(bad))
    except ConfigError:
        config.content, config.sources = saved
        raise


def config_as_dict() -> dict:
    """Nested `{section: {param: value}}` of every resolved value, defaults included (JSON-serialisable)."""
    return get_config().as_dict()


# ----------------------------------------------------------------------------------------------------------
# command line

def _parse_argv(config: Config, argv: list[str]) -> tuple[list[str], list[tuple[Key, str]], list[str]]:
    """Split argv into config files, (key, raw value) pairs, and errors. Flags may be bare (`--a.flag`)."""
    files: list[str] = []
    pairs: list[tuple[Key, str]] = []
    errors: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        name, eq, inline = token.partition("=")
        if name in ("-C", "--config-file", "--config_file"):
            if eq:
                files.append(inline)
            elif i < len(argv):
                files.append(argv[i])
                i += 1
            else:
                errors.append(f"{name}: missing the config file path")
            continue
        if not name.startswith("--") or len(name) == 2:
            errors.append(f"unexpected command-line argument {token!r}: use --section.param VALUE or -C FILE")
            continue
        path = _key(name[2:])
        if path not in config.entries:
            errors.append(f"unknown config key '{_name(path)}' (on the command line){config.suggest(path)}")
            if not eq and i < len(argv) and not argv[i].startswith("--"):
                i += 1  # skip its value
            continue
        if eq:
            pairs.append((path, inline))
        elif i < len(argv) and not (argv[i].startswith("--") or argv[i] == "-C"):
            pairs.append((path, argv[i]))
            i += 1
        elif isinstance(config.entries[path].checker, Bool) or config.entries[path].is_flag:
            pairs.append((path, "true"))
        else:
            errors.append(f"{_name(path)}: missing value on the command line")
    return files, pairs, errors


def load_config(argv: list[str] | None = None, description: str = "", config: Mapping | None = None) -> Config:
    """Fill the global config: defaults < `config` < each `-C/--config-file` < `--section.param value`.

    `argv` defaults to `sys.argv[1:]`. Previously set values are cleared first. `-h/--help` prints every
    section and param and exits 0. Any unknown key, unreadable file, bad or missing value: every problem is
    printed to stderr as one sentence, then SystemExit(2), before any work starts.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = get_config()
    if "-h" in argv or "--help" in argv:
        print(cfg.help_text(os.path.basename(sys.argv[0]) or "python", description))
        raise SystemExit(0)
    cfg.clear_values()
    files, pairs, errors = _parse_argv(cfg, argv)
    try:
        if config is not None:
            cfg.collect(config, source="from load_config(config=...)")
        for fname in files:
            cfg.collect_config_file(fname)
    except ConfigError as e:
        errors.insert(0, str(e))
    for path, raw in pairs:
        cfg.set_value(path, raw, "on the command line")
    errors += cfg.errors()
    if errors:
        _fail(errors)
    return cfg


# ----------------------------------------------------------------------------------------------------------
# decorators

ParamSpec = tuple[str | None, str, str]  # (section or None, key, argument name)


def _wrap(fn: Callable, specs: tuple[ParamSpec, ...]) -> Callable:
    """A wrapper of `fn` that fills the arguments named in `specs` from the config unless given by hand."""
    signature = inspect.signature(fn)
    accepts_kwargs = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    for _, key, alias in specs:
        if alias not in signature.parameters and not accepts_kwargs:
            raise TypeError(f"@param('{key}'): {fn.__qualname__}() has no argument '{alias}'")

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            given = signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            return fn(*args, **kwargs)  # let Python report the bad call
        for section_name, key, alias in specs:
            if alias in given or alias in kwargs:
                continue
            kwargs[alias] = get_value(f"{section_name}.{key}" if section_name else key)
        return fn(*args, **kwargs)

    wrapper.__config_params__ = specs  # type: ignore[attr-defined]
    return wrapper


def _unwrap(fn: Callable) -> tuple[Callable, tuple[ParamSpec, ...]]:
    specs = getattr(fn, "__config_params__", None)
    if specs is None:
        return fn, ()
    return fn.__wrapped__, specs


def param(key: str, alias: str | None = None) -> Callable[[F], F]:
    """Fill argument `alias` (default: last part of `key`) from config value `key` unless given by hand.

    Works on functions and methods, stacks, and combines with `@section` placed above it.
    """
    spec: ParamSpec = (None, key, alias or key.split(".")[-1])

    def decorator(fn: F) -> F:
        if isinstance(fn, (staticmethod, classmethod)):  # @param above @staticmethod / @classmethod
            return type(fn)(decorator(fn.__func__))  # type: ignore[return-value]
        inner, specs = _unwrap(fn)
        return _wrap(inner, (spec, *specs))  # type: ignore[return-value]

    return decorator


def section(name: str) -> Callable[[F], F]:
    """Prefix `name.` to the keys of the `@param` decorators below it that have no section yet."""

    def decorator(fn: F) -> F:
        if isinstance(fn, (staticmethod, classmethod)):
            return type(fn)(decorator(fn.__func__))  # type: ignore[return-value]
        inner, specs = _unwrap(fn)
        if not specs:
            raise TypeError(f"@section('{name}') on {getattr(fn, '__qualname__', fn)}: put @param below it")
        return _wrap(inner, tuple((name if s is None else s, k, a) for s, k, a in specs))  # type: ignore

    return decorator


get_config()  # make fastargs's global config a torchstrap Config from the start
