"""Reading the small files a run depends on, with errors that name the file and the fault.

A bare `JSONDecodeError` or a library's "header too large" says neither which of a dozen files
is broken nor what it should have been; every loader goes through here so the message always
reads "<path>: <what is wrong>; expected <what it should be>".
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["FileFormatError", "json_type", "read_json", "read_text"]


class FileFormatError(ValueError):
    """A file that exists but cannot be used; the message starts with its path."""


def _fail(path: str, problem: str, what: str) -> FileFormatError:
    return FileFormatError(f"{path}: {problem}; expected {what}")


def json_type(value: Any) -> str:
    """JSON's own name for a value's type, which is what a user sees in the file."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return "null" if value is None else type(value).__name__


def read_text(path: str | os.PathLike, what: str) -> str:
    """The file as UTF-8 text (a BOM is dropped); a missing, empty or non-UTF-8 file raises."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise _fail(path, "a folder, not a file", what)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing; expected {what}")
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise _fail(path, "empty" if not raw else "blank (only whitespace)", what)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise _fail(path, f"not UTF-8 text (line {line}, byte {e.start}: {e.reason})",
                    what) from None


def read_json(path: str | os.PathLike, what: str, kind: type | None = dict) -> Any:
    """The JSON value in `path`, which must be of type `kind` (an object unless told otherwise).

    `what` says what the file should be ("a transformers config.json"), for the message.
    """
    path = os.fspath(path)
    text = read_text(path, what)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise _fail(path, f"not valid JSON (line {e.lineno} column {e.colno}: {e.msg})",
                    what) from None
    if kind is not None and not isinstance(value, kind):
        expected = json_type(kind()) if kind in (dict, list, str) else kind.__name__
        raise _fail(path, f"holds {json_type(value)}, not {expected}", what)
    return value
