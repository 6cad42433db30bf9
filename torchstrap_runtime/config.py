"""Configuration: fastargs 1.2.0's `Section` and `Param`, with strict checkers and a state of our own.

    Section("optimizer", "the optimizer").params(lr=Param(Float(min=0, min_exclusive=True), "learning rate", 0.1))

    @param("optimizer.lr")     # on functions and methods; a value given by hand wins
    def make_optimizer(params, lr): ...

    load_config(argv, package="my_experiment", defaults_file="configs/default.yaml")
    # declared defaults < defaults_file < config= mapping < -C/--config-file (YAML or JSON) < --optimizer.lr 0.05

`package`: every module of it is imported first, so a `Section` declared anywhere in it is known. `get_value(key)`
reads one value, `config_as_dict()` all, `config_files()` the files read; `set_values({...})` sets values
(checked, all or nothing); `reset_config()` starts afresh. `load_config` also takes `-h/--help` and
`--print-config` (every key with its value and help, as YAML; exit 0).
Checkers convert and check a value; their `help()` ("an int >= 1", "a float in [0, 1)") ends up in the errors.

fastargs's traps fixed here (a param declared with fastargs's own checker or a type gets ours): `bool("false")`
was True; Int took 3.5; OneOf refused the command line's "3"; a flag set in a file was reset by the command
line; unknown keys were ignored (ours are errors with a close-match suggestion); bad values exited 0 (ours: one
sentence each naming key, value, what is expected and where from, exit code 2, before any work); `@param` lost
name, docstring and signature, and did not work on methods or pickle; `sys.argv` and environment variables
were read implicitly.
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib
import inspect
import json
import math
import os
import pkgutil
import sys
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import fastargs.validation as fv
import yaml
from fastargs import Param, Section  # Param(checker, desc, default=None, required=False, is_flag=False)
from fastargs.state import get_current_config, set_current_config

from .command_line import Option, read_argv
from .errors import DEBUG_FLAG, UserError, fail

F = TypeVar("F", bound=Callable[..., Any])
Key = tuple[str, ...]
NONE_WORDS = ("none", "null")  # strings that mean None wherever None is allowed
HELP_FLAGS = ("-h", "--help")
PRINT_FLAG = "--print-config"
CONFIG_FILE_OPTIONS = ("-C", "--config-file")
COMMENT_COLUMN = 36  # where --print-config's comments start (unless the value is longer)


class ConfigError(UserError, ValueError):
    """A bad, missing or unknown config value; the message says which key, what was given, what was expected."""


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that gives the same key twice (YAML would keep the last value)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, Hashable) and key in seen:
                raise DuplicateKeyError(f"key {key!r} is given twice, at lines {seen[key]} and {line} (keep one)")
            if isinstance(key, Hashable):
                seen[key] = line
        return super().construct_mapping(node, deep)


def parse_text(text: str) -> Any:
    """The value in a JSON or YAML text: a config file, or a mapping or list given on the command line.
    A key given twice in one mapping is refused."""
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError:
        pass
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"neither JSON nor YAML ({getattr(e, 'problem', None) or e}{where})") from None


class DuplicateKeyError(ValueError):
    """A JSON or YAML mapping gives the same key twice."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object's pairs as a dict; a key given twice is refused (ValueError naming it)."""
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKeyError(f"key {key!r} is given twice in one JSON object (keep one)")
        result[key] = value
    return result


class Checker(fv.Checker):
    """`check(value)` returns the converted value or raises ValueError; `help()` says what is expected."""
    expected = "anything"

    def help(self) -> str:
        return self.expected


class Bool(Checker):
    expected = "a boolean (true/false, 1/0, yes/no, on/off)"
    WORDS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}

    def check(self, value: Any) -> bool:
        word = str(value).strip().lower() if isinstance(value, (str, int)) else None  # True: "true", 1: "1"
        if word not in self.WORDS:
            raise ValueError(f"not a boolean: {value!r}")
        return self.WORDS[word]


class Int(Checker):
    """An int in the optional range (inclusive unless `min_exclusive`/`max_exclusive`); "3", 3.0 and "1e3" are
    accepted, 3.5, NaN and True are not."""

    expected = "an int"

    def __init__(self, min: float | None = None, max: float | None = None, min_exclusive: bool = False,
                 max_exclusive: bool = False):
        self.min, self.max, self.min_exclusive, self.max_exclusive = min, max, min_exclusive, max_exclusive

    def convert(self, value: Any) -> int:
        if isinstance(value, str):
            value = int(value) if value.strip().lstrip("+-").isdigit() else float(value)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        raise ValueError(f"not {self.expected}: {value!r}")

    def check(self, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"a bool is not {self.expected}")
        number = self.convert(value)
        low = self.min is not None and (number < self.min or (self.min_exclusive and number == self.min))
        high = self.max is not None and (number > self.max or (self.max_exclusive and number == self.max))
        if low or high or number != number:  # NaN is never accepted
            raise ValueError(f"{number} is not {self.help()}")
        return number

    def help(self) -> str:
        low = "" if self.min is None else f" {'>' if self.min_exclusive else '>='} {self.min}"
        high = "" if self.max is None else f" {'<' if self.max_exclusive else '<='} {self.max}"
        if low and high:
            low, high = f" in {'(['[not self.min_exclusive]}{self.min}, ", f"{self.max}{')]'[not self.max_exclusive]}"
        return self.expected + low + high


class Float(Int):
    """A float in the optional range; ints and numeric strings ("1e-3") are accepted, bools and NaN are not."""
    expected = "a float"

    def convert(self, value: Any) -> float:
        if isinstance(value, (int, float, str)):
            return float(value)
        raise ValueError(f"not a float: {value!r}")


class OptionalInt(Int):
    """An int in the optional range, or None (also the strings in NONE_WORDS, any case): seeds."""

    def check(self, value: Any) -> Any:
        return None if value is None or str(value).strip().lower() in NONE_WORDS else super().check(value)

    def help(self) -> str:
        return f"{super().help()} or none"


class Str(Checker):
    """A string; numbers are converted (`version: 1.0` in YAML gives "1.0"), bools and containers are not."""
    expected = "a string"

    def check(self, value: Any) -> str:
        if isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            return str(value)
        raise ValueError(f"not a string: {value!r}")


class OneOf(Checker):
    """One of the given values; "3" matches the choice 3 (command-line values are strings)."""

    def __init__(self, choices: Any):
        self.choices = list(choices)
        self.expected = "one of " + ", ".join(repr(c) for c in self.choices)

    def check(self, value: Any) -> Any:
        for choice in self.choices:
            if (value == choice and type(value) is type(choice)) or (isinstance(value, str) and str(choice) == value):
                return choice
        raise ValueError(f"not one of {self.choices}: {value!r}")


class Dict(Checker):
    """A mapping (a copy: defaults are never shared); on the command line JSON or a YAML flow mapping."""
    expected = "a mapping (JSON object on the CLI)"

    def check(self, value: Any) -> dict:
        value = (parse_text(value) if value.strip() else {}) if isinstance(value, str) else value
        if not isinstance(value, Mapping):
            raise ValueError(f"not a mapping: {value!r}")
        return copy.deepcopy(dict(value))


class ListOf(Checker):
    """A list whose items pass `item` (`ListOf(OneOf([...]))`); on the command line "[a, b]" or "a,b"."""

    def __init__(self, item: Any):
        self.item = as_checker(item)
        self.expected = f"a list of ({self.item.help()})"

    def check(self, value: Any) -> list:
        if isinstance(value, str):
            text = value.strip()
            value = parse_text(text) if text.startswith("[") else [item.strip() for item in text.split(",") if text]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"not a list: {value!r}")
        return [self.item.check(item) for item in value]


class ListOfInt(ListOf):
    """A list of ints in the range given (`ListOfInt(min=1)`)."""

    def __init__(self, **int_range: Any):
        super().__init__(Int(**int_range))


def as_checker(checker: Any) -> fv.Checker:
    """Ours as is; a type (int, float, bool, str) or a lenient fastargs checker: our strict one."""
    checker = fv.get_checker(checker)
    if type(checker) is fv.OneOf:
        return OneOf(sorted(checker.possible_values, key=str))
    strict = {fv.Bool: Bool, fv.Int: Int, fv.Float: Float, fv.Str: Str}.get(type(checker))
    return strict() if strict else checker


class Config:
    """The declared params (`entries`, in declaration order), the values given (`content`), their `sources`,
    and the config `files` read, in order."""

    def __init__(self) -> None:
        self.sections: dict[Key, Section] = {}
        self.entries: dict[Key, Any] = {}
        self.content: dict[Key, Any] = {}
        self.sources: dict[Key, str] = {}
        self.files: list[str] = []

    def add_section(self, section: Section) -> None:  # called by fastargs's Section
        self.sections[section.ns] = section

    def add_entry(self, ns: Key, name: str, entry: Any) -> None:  # called by Section.params; replaces one declared
        entry.checker = as_checker(entry.checker)
        self.entries[ns + tuple(name.split("."))] = entry

    def unknown(self, path: Key, where: str = "") -> ConfigError:
        close = difflib.get_close_matches(".".join(path), [".".join(k) for k in self.entries], n=1, cutoff=0.6)
        return ConfigError(f"unknown config key '{'.'.join(path)}'{where}"
                           + (f"; did you mean '{close[0]}'?" if close else ""))

    def collect(self, tree: Any, source: str, prefix: Key = ()) -> tuple[list[Key], list[str]]:
        """Set (unchecked) every value of a nested or dotted mapping: (their keys, a sentence per unknown key)."""
        if not isinstance(tree, Mapping):
            return [], [f"{source}: expected a mapping {{section: {{param: value}}}}, got {type(tree).__name__}"]
        paths, errors = [], []
        for name, value in tree.items():
            path = prefix + tuple(str(name).split("."))
            if path in self.entries:
                self.content[path], self.sources[path] = value, source
                paths.append(path)
            elif isinstance(value, Mapping) and value:  # a section (or a typo of one: its leaves are reported)
                found, unknown = self.collect(value, source, path)
                paths, errors = paths + found, errors + unknown
            else:
                errors.append(str(self.unknown(path, f" ({source})")))
        return paths, errors

    def __getitem__(self, key: str | Key) -> Any:
        """The checked value of `key`; ConfigError when unknown, bad or missing."""
        path = tuple(key.split(".")) if isinstance(key, str) else tuple(key)
        if path not in self.entries:
            raise self.unknown(path)
        entry, given = self.entries[path], path in self.content
        value = self.content[path] if given else entry.default
        if value is None and entry.required:
            raise ConfigError(f"{'.'.join(path)}: missing required value, expected {entry.checker.help()}"
                              + (f": {entry.desc}" if entry.desc else ""))
        try:
            return None if value is None else entry.checker.check(value)
        except Exception as e:
            where = self.sources.get(path, "given") if given else "the default"
            raise ConfigError(f"{'.'.join(path)}: got {value!r}, expected {entry.checker.help()} ({where})") from e

    def errors(self, paths: Any = None) -> list[str]:
        """One sentence per bad or missing value (of `paths`, default all)."""
        found = []
        for path in self.entries if paths is None else paths:
            try:
                self[path]
            except ConfigError as e:
                found.append(str(e))
        return found

    def as_dict(self) -> dict:
        result: dict = {}
        for path in self.entries:
            node = result
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = self[path]
        return result

    def help_text(self, prog: str, description: str, defaults_file: str | os.PathLike | None = None) -> str:
        """The `--help` text; a default that `defaults_file` (already collected) sets is shown with the file."""
        first = f" ({shown_path(defaults_file)} before them)" if defaults_file else ""
        lines = [f"usage: {prog} [-h] [--print-config] [{DEBUG_FLAG}] [-C CONFIG_FILE ...] [--section.param VALUE ...]",
                 description,
                 f"  -C, --config-file FILE  YAML or JSON {{section: {{param: value}}}}; later files win{first}",
                 "  --section.param VALUE   wins over files; a bare --flag means true",
                 "  --print-config          print every key with its resolved value and help (YAML) and exit",
                 f"  {DEBUG_FLAG:<24}show the traceback of errors (or TORCHSTRAP_DEBUG=1)"]
        sections: dict[Key, list[Key]] = {}
        for path in self.entries:
            sections.setdefault(path[:-1], []).append(path)
        for ns, paths in sections.items():
            lines += ["", f"{'.'.join(ns)}: {getattr(self.sections.get(ns), 'desc', None) or ''}"]
            for path in paths:
                entry = self.entries[path]
                if path in self.content:
                    default = (f"default {self.content[path]!r} from {shown_path(defaults_file)}; "
                               f"declared {entry.default!r}")
                elif entry.required and entry.default is None:
                    default = "required"
                else:
                    default = f"default {entry.default!r}"
                lines.append(f"  --{'.'.join(path):<32} {entry.desc} ({entry.checker.help()}; {default})")
        return "\n".join(lines)

    def as_yaml(self) -> str:
        """Every resolved value as YAML (it loads back to `as_dict()`), each key with its help as a comment."""
        lines = ["# every config key: its resolved value, what it means and what it accepts"]

        def add(tree: dict, prefix: Key) -> None:
            indent = "  " * len(prefix)
            for name, value in tree.items():
                path = prefix + (name,)
                if path in self.entries:
                    entry = self.entries[path]
                    expected = "" if isinstance(entry.checker, (Bool, Str)) else entry.checker.help()  # else plain
                    meaning = f"{entry.desc} ({expected})" if entry.desc and expected else entry.desc or expected
                    lines.append(with_comment(f"{indent}{name}: {yaml_value(value)}", meaning))
                else:
                    if not prefix:
                        lines.append("")
                    lines.append(with_comment(f"{indent}{name}:", getattr(self.sections.get(path), "desc", "")))
                    add(value, path)

        add(self.as_dict(), ())
        return "\n".join(lines) + "\n"


def yaml_value(value: Any) -> str:
    """`value` as one line of YAML (flow style; JSON, which YAML reads too, when a string holds a line break)."""
    text = yaml.safe_dump([value], default_flow_style=True, width=math.inf).strip()[1:-1]
    return json.dumps(value) if "\n" in text else text


def with_comment(text: str, comment: str | None) -> str:
    """`text` and `# comment` (on one line) from COMMENT_COLUMN, or just `text`."""
    comment = " ".join((comment or "").split())
    return f"{text:<{COMMENT_COLUMN - 1}} # {comment}" if comment else text


def shown_path(path: str | os.PathLike | None) -> str:
    """`path` relative to the working folder when it lies below it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def get_config() -> Config:
    """The global Config (fastargs's current config; made a torchstrap Config on first use)."""
    config = get_current_config()
    return config if isinstance(config, Config) else reset_config()


def reset_config(keep_sections: bool = False) -> Config:
    """A fresh global config: no values, and no sections unless `keep_sections` (then only values go)."""
    config = get_config() if keep_sections else Config()
    config.content.clear()
    config.sources.clear()
    config.files.clear()
    set_current_config(config)
    return config


def get_value(key: str) -> Any:
    """The checked value of `key` ("section.param"); ConfigError if unknown, missing or bad."""
    return get_config()[key]


def set_values(mapping: Mapping, source: str = "set_values") -> None:
    """Set values from a nested or dotted mapping; unknown keys or bad values: ConfigError, and nothing set."""
    config = get_config()
    saved = (dict(config.content), dict(config.sources))
    paths, errors = config.collect(mapping, source)
    errors += config.errors(paths)
    if errors:
        config.content, config.sources = saved
        raise ConfigError("\n".join(errors))


def config_as_dict() -> dict:
    """Nested `{section: {param: value}}` of every resolved value, defaults included."""
    return get_config().as_dict()


def config_files() -> list[str]:
    """The config files the last `load_config` read, in order (absolute paths; the defaults file first)."""
    return list(get_config().files)


def collect_file(config: Config, path: str | os.PathLike) -> list[str]:
    """Collect a YAML or JSON config file into `config`; a sentence per problem (the file, or a key in it)."""
    try:
        tree = parse_text(Path(path).read_text()) or {}
    except OSError as e:  # missing, a folder, no permission
        return [f"config file '{path}' cannot be read: {e.strerror or e}"]
    except ValueError as e:  # UnicodeDecodeError too
        return [f"config file '{path}' could not be parsed: {e}"]
    config.files.append(str(Path(path).resolve()))
    return config.collect(tree, f"in {path}")[1]


def collect_defaults_file(config: Config, path: str | os.PathLike) -> list[str]:
    """`collect_file` for the experiment's defaults file, which must exist."""
    if not Path(path).exists():
        return [f"defaults file '{path}' does not exist: it holds the experiment's values over the declared "
                "defaults and is read first; restore it (an empty file sets nothing)"]
    return collect_file(config, path)


def parse_argv(config: Config, options: list[Option]) -> tuple[dict[str, str], list[str]]:
    """Collect each -C/--config-file of `options` (`read_argv`'s) into `config`, in order; return the command
    line's {key: raw value} and a sentence per problem. Flags may be bare (`--a.flag`); -h/--help, --print-config
    and --debug are the caller's."""
    values, errors = {}, []
    for name, value, tokens in options:
        path = tuple(name[2:].split("."))
        if name in (*HELP_FLAGS, PRINT_FLAG, DEBUG_FLAG) and value is None:
            continue
        if name in CONFIG_FILE_OPTIONS:
            errors += collect_file(config, value) if value is not None else [f"{name}: missing the config file path"]
        elif not name.startswith("--") or len(name) == 2:
            errors.append(f"unexpected command-line argument {tokens[0]!r}: use --section.param VALUE or -C FILE")
        elif path not in config.entries:
            errors.append(str(config.unknown(path, " (on the command line)")))
        elif value is not None or isinstance(config.entries[path].checker, Bool) or config.entries[path].is_flag:
            values[name[2:]] = "true" if value is None else value
        else:
            errors.append(f"{name[2:]}: missing value on the command line")
    return values, errors


def import_package(name: str) -> list[str]:
    """Import the package `name` and every module under it (sub-packages too, `__main__` excepted), so that
    each `Section` they declare is known before a config is read; returns the module names, in import order.
    A plain module is imported alone."""
    package = importlib.import_module(name)
    names = [name]
    for module in pkgutil.walk_packages(getattr(package, "__path__", []), prefix=f"{name}."):
        if module.name.rpartition(".")[2] != "__main__":
            importlib.import_module(module.name)
            names.append(module.name)
    return names


def load_config(argv: list[str] | None = None, description: str = "", config: Mapping | None = None, *,
                package: str | None = None, defaults_file: str | os.PathLike | None = None) -> Config:
    """Fill the global config from scratch: declared defaults < `defaults_file` < `config` < each `-C FILE` <
    `--section.param value` in `argv` (default `sys.argv[1:]`).

    `package`: every module of it is imported first (`import_package`), so the Sections declared anywhere in it
    are known. `defaults_file`: the experiment's values over the declared defaults; it must exist (naming it
    again with -C is harmless). Every unknown key, unreadable file, bad or missing value: one sentence each on
    stderr, exit code 2 (`--debug` or TORCHSTRAP_DEBUG=1: the traceback). `-h/--help` and `--print-config` print
    and exit 0.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if package:
        import_package(package)
    cfg = reset_config(keep_sections=True)
    options = read_argv(argv, flags=(*HELP_FLAGS, PRINT_FLAG, DEBUG_FLAG))
    given = {option.name for option in options if option.value is None}
    errors = collect_defaults_file(cfg, defaults_file) if defaults_file is not None else []  # in order of precedence
    if given & set(HELP_FLAGS):
        print(cfg.help_text(os.path.basename(sys.argv[0]) or "python", description, defaults_file))
        raise SystemExit(0)
    errors += cfg.collect(config or {}, "from load_config(config=...)")[1]
    values, argv_errors = parse_argv(cfg, options)
    errors += argv_errors + cfg.collect(values, "on the command line")[1] + cfg.errors()
    if errors:
        fail(ConfigError("\n".join(errors)), "config error", argv)
    if PRINT_FLAG in given:
        print(cfg.as_yaml(), end="")
        raise SystemExit(0)
    return cfg


def param(key: str, alias: str | None = None) -> Callable[[F], F]:
    """Fill argument `alias` (default: the last part of `key`) from config value `key` unless given by hand;
    on functions, methods, static and class methods (above or below their decorator); stacks."""
    alias = alias or key.split(".")[-1]

    def decorator(fn: Any) -> Any:
        if isinstance(fn, (staticmethod, classmethod)):
            return type(fn)(decorator(fn.__func__))
        specs = {alias: key, **getattr(fn, "__config_params__", {})}
        if hasattr(fn, "__config_params__"):  # stacked: wrap the undecorated function once
            fn = fn.__wrapped__
        signature = inspect.signature(fn)
        if alias not in signature.parameters and all(p.kind != p.VAR_KEYWORD for p in signature.parameters.values()):
            raise TypeError(f"@param('{key}'): {fn.__qualname__}() has no argument '{alias}'")

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                given = signature.bind_partial(*args, **kwargs).arguments
            except TypeError:
                return fn(*args, **kwargs)  # let Python report the bad call
            kwargs.update({name: get_value(k) for name, k in specs.items() if name not in given and name not in kwargs})
            return fn(*args, **kwargs)

        wrapper.__config_params__ = specs
        return wrapper

    return decorator


get_config()  # make fastargs's global config a torchstrap Config from the start
