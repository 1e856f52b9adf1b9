"""A method's options as one typed declaration (after peft's ``LoraConfig``).

Each method declares a dataclass of :class:`MethodOptions` whose fields are made by
:func:`option`: the default, the help text and what a valid value is live in one
place. From that one declaration come the checks (:meth:`MethodOptions.from_dict`:
an unknown name or a bad value is a one-line :class:`HfPxError`), the CLI's
``--<method>-<option>`` flags (``hf_px/cli/prune.py`` reads :func:`declared`), and
what a saved ``pruning_config.json`` may hold (:meth:`MethodOptions.known`).

A default of None means "not given": the method then decides (PX reads whether a
bound-only option was given to choose its ``form``), and the help says what applies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from ..errors import HfPxError

_KIND_WORDS = {bool: "true or false", int: "a whole number", float: "a number"}


def option(
    default: Any,
    help: str,
    *,
    choices: Sequence[Any] | None = None,
    kind: type | None = None,
    check: Callable[[Any], Any] | None = None,
    metavar: str | None = None,
) -> Any:
    """A dataclass field of a method's options.

    ``choices``: the valid values (None, "not given", is always valid). ``kind``: the
    type a value is converted to, from text on the command line and from JSON numbers
    (default: the default's type). ``check(value) -> value``: the value normalised, or
    an :class:`HfPxError` naming the fix, for what ``choices`` cannot say.
    """
    if kind is None:
        kind = type(default) if default is not None else str
    metadata = {"help": help, "choices": choices, "kind": kind, "check": check, "metavar": metavar}
    return dataclasses.field(default=default, metadata=metadata)


def _to_bool(value: Any) -> bool:
    """True/False from a bool or the words the command line and JSON give."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


@dataclasses.dataclass(frozen=True)
class MethodOptions:
    """Base of every method's options; ``method`` names the method in messages."""

    method: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                object.__setattr__(self, f.name, self._checked(f, value))

    def _checked(self, f: dataclasses.Field, value: Any) -> Any:
        meta = f.metadata
        kind, choices, check = meta["kind"], meta["choices"], meta["check"]
        if check is not None:
            return check(value)
        if choices is not None:
            if value not in choices:
                raise HfPxError(
                    f"{self.method} option {f.name}={value!r} is unknown; "
                    f"use one of {', '.join(str(c) for c in choices)}"
                )
            return value
        try:
            if kind is bool:
                return _to_bool(value)
            if kind in (int, float) and isinstance(value, bool):
                raise ValueError(value)
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)  # int() would truncate 2.5 to 2 silently
            return kind(value)
        except (TypeError, ValueError):
            what = _KIND_WORDS.get(kind, kind.__name__)
            example = "" if f.default is None else f"; give one such as {f.default!r}"
            raise HfPxError(
                f"{self.method} option {f.name}={value!r} is not {what}{example}"
            ) from None

    @classmethod
    def known(cls) -> tuple[str, ...]:
        """The option names, sorted (what an error lists)."""
        return tuple(sorted(f.name for f in dataclasses.fields(cls)))

    @classmethod
    def unknown(cls, given: dict[str, Any]) -> list[str]:
        return sorted(set(given) - set(cls.known()))

    @classmethod
    def from_dict(cls, given: dict[str, Any]) -> MethodOptions:
        """The options `given` by name, checked: an unknown name is an error naming the
        valid ones (a typo must not run silently with the default)."""
        unknown = cls.unknown(given)
        if unknown:
            names = ", ".join(repr(n) for n in unknown)
            valid = ", ".join(cls.known()) or "none"
            raise HfPxError(
                f"{cls.method} has no option{'s' if len(unknown) > 1 else ''} {names}; "
                f"valid: {valid}"
            )
        return cls(**given)

    def given(self) -> dict[str, Any]:
        """The options that are not None, by name (what `replace` and a record take)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }


def declared(options: type[MethodOptions]) -> list[dataclasses.Field]:
    """The fields of a method's options, in declaration order (the CLI's flags)."""
    return list(dataclasses.fields(options))


def parse_text(options: type[MethodOptions], name: str, text: str) -> Any:
    """A command-line value of option `name`, by the same conversion and checks the
    library applies (one rule for both)."""
    return getattr(options(**{name: text}), name)


__all__ = ["MethodOptions", "declared", "option", "parse_text"]
