"""The one command-line reader of the runtime: the config (`-C FILE`, `--section.key VALUE`), `--debug`
(`errors.exit_on_user_error`) and the launcher's own options (`--sweep`, `--local`, `--import`) all read argv here.

    read_argv(["-C", "a.yaml", "--optimizer.lr=0.1", "--training.compile", "extra"])
    # [Option("-C", "a.yaml"), Option("--optimizer.lr", "0.1"), Option("--training.compile", None), Option("", "extra")]
    split_options(["--sweep", "optimizer.lr=0.1,0.2", "--local", "--training.epochs", "3"],
                  flags=["--local"], options=["--sweep"])
    # ({"--local": [True], "--sweep": ["optimizer.lr=0.1,0.2"]}, ["--training.epochs", "3"])

The rules: `--name=VALUE`; `--name VALUE` where VALUE is the next token unless that is an option itself (a token
starting with `--`, or `-C`, `-h`: so `--optimizer.lr -0.1` is a value); a bare `--name` has no value (always
so for a name listed as a flag). Nothing here imports the rest of the package.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

SHORT_OPTIONS = ("-C", "-h")


class Option(NamedTuple):
    """One option of a command line as typed: its name ("" for a token that is no option), its value (None when
    given without one) and its tokens."""

    name: str
    value: str | None
    tokens: tuple[str, ...]


def is_option(token: str) -> bool:
    """Whether `token` names an option (`--anything`, `-C`, `-h`) rather than being a value."""
    return token.startswith("--") or token in SHORT_OPTIONS


def read_argv(argv: Sequence[str], flags: Iterable[str] = ()) -> list[Option]:
    """`argv` as its options, in order (see the module's rules); a name in `flags` never takes the next token."""
    flags = set(flags)
    options, i = [], 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not is_option(token):
            options.append(Option("", token, (token,)))
            continue
        name, eq, value = token.partition("=")
        if eq:
            options.append(Option(name, value, (token,)))
        elif name not in flags and i < len(argv) and not is_option(argv[i]):
            options.append(Option(name, argv[i], (token, argv[i])))
            i += 1
        else:
            options.append(Option(name, None, (token,)))
    return options


def split_options(argv: Sequence[str], flags: Iterable[str | tuple[str, ...]] = (),
                  options: Iterable[str | tuple[str, ...]] = ()) -> tuple[dict[str, list], list[str]]:
    """Take the named `flags` (no value) and `options` (one value each time; repeatable) out of `argv`.

    Returns ({first name: [True for each flag given, or each option's value, in order]}, the other tokens in
    order). A name may be a tuple of aliases (`("-C", "--config-file")`), listed under its first name. A flag is
    taken only bare (`--local=1` stays in the rest); an option given without a value: ValueError naming it.
    """
    def aliases(names: Iterable[str | tuple[str, ...]]) -> dict[str, str]:
        groups = [(name,) if isinstance(name, str) else tuple(name) for name in names]
        return {alias: group[0] for group in groups for alias in group}

    flag_names, option_names = aliases(flags), aliases(options)
    found: dict[str, list] = {name: [] for name in (*flag_names.values(), *option_names.values())}
    rest: list[str] = []
    for option in read_argv(argv, flag_names):
        if option.name in flag_names and option.value is None:
            found[flag_names[option.name]].append(True)
        elif option.name in option_names:
            if option.value is None:
                raise ValueError(f"{option.name} needs a value")
            found[option_names[option.name]].append(option.value)
        else:
            rest.extend(option.tokens)
    return found, rest
