"""The CLI's argument parser and the checks of argument values, made while the arguments are
parsed: a wrong value is refused with one line before any file or server is touched."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn

from l2_session.infrastructure.identity import DIDError, public_bytes_from_did_key
from l2_session.tools.errors import UsageError


class ArgumentsRejected(UsageError):
    """What argparse found wrong, with the command it was for (``prog``)."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(f"{message} (see `{prog} --help`)")
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """argparse, but an error is one line handed to main() (its exit code 2), not a usage
    block printed and an exit from deep inside parsing."""

    def error(self, message: str) -> NoReturn:
        raise ArgumentsRejected(self.prog, message)


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argument type: a whole number from ``low`` (to ``high``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"{value} is out of range: give {bounds}")
        return value

    return parse


def positive_seconds(text: str) -> float:
    """An argument type: a finite number of seconds above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds above 0")
    return value


def did_key(text: str) -> str:
    """An argument type: an Ed25519 did:key (the form in which nodes sign the ledger)."""
    try:
        public_bytes_from_did_key(text)
    except DIDError as e:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a usable did:key ({e}); give the did:key of a node allowed to "
            "sign, as listed under 'signers seen' by verify"
        ) from None
    return text


def non_empty(what: str) -> Callable[[str], str]:
    """An argument type: any text but the empty string (which would name the current folder)."""

    def parse(text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError(f"is empty: give {what}")
        return text

    return parse
