"""The checks of argument values, made while the command line is parsed: a wrong value is
refused with one line before any file or server is touched. Each is a click parameter type;
``parse`` functions raise ``BadValue`` with what was expected."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
from l2_session.infrastructure.identity import DIDError, public_bytes_from_did_key


class BadValue(ValueError):
    """A value that is not what its option takes; the message says what is expected."""


if TYPE_CHECKING:
    _ParamType = click.ParamType[Any]  # generic to type checkers in recent click
else:
    _ParamType = click.ParamType


class Checked(_ParamType):
    """A click type from a function that parses the text or raises ``BadValue``."""

    def __init__(self, name: str, parse: Callable[[str], Any]) -> None:
        self.name, self._parse = name, parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):  # a default, already of the type
            return value
        try:
            return self._parse(value)
        except BadValue as e:
            self.fail(str(e), param, ctx)


def whole_number(low: int, high: int | None = None) -> Checked:
    """A whole number from ``low`` (to ``high``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise BadValue(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise BadValue(f"{value} is out of range: give {bounds}")
        return value

    return Checked("whole number", parse)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadValue(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise BadValue(f"{text} is not a number of seconds above 0")
    return value


positive_seconds = Checked("seconds", _positive_seconds)
"""A finite number of seconds above zero."""


def _did_key(text: str) -> str:
    try:
        public_bytes_from_did_key(text)
    except DIDError as e:
        raise BadValue(
            f"{text!r} is not a usable did:key ({e}); give the did:key of a node allowed to "
            "sign, as listed under 'signers seen' by verify"
        ) from None
    return text


did_key = Checked("did:key", _did_key)
"""An Ed25519 did:key (the form in which nodes sign the ledger)."""


def non_empty(what: str) -> Checked:
    """Any text but the empty string (which would name the current folder)."""

    def parse(text: str) -> str:
        if not text:
            raise BadValue(f"is empty: give {what}")
        return text

    return Checked("text", parse)
