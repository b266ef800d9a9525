"""The shape of one row of the bad-input and fault table (`tests/test_bad_input.py`).

A row does the bad thing in a fresh temporary folder and names the error it must raise and the
words its message must contain, so a message that regresses to a bare library error (a
`JSONDecodeError`, `SafetensorError`, `IndexError` from deep inside a library) fails the table.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable, Sequence, Union

Says = Union[Sequence[str], Callable[[pathlib.Path], Sequence[str]]]


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[pathlib.Path], Any]  # gets a fresh tmp folder; must raise
    error: Union[type, tuple]  # the exception type(s) expected
    says: Says  # substrings of the message (a callable gets the tmp folder, for paths)
    kind: str = "input"  # "input" (bad input) or "fault" (a fault during training)

    def expected(self, tmp: pathlib.Path) -> list[str]:
        return list(self.says(tmp) if callable(self.says) else self.says)
