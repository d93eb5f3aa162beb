"""Reading input files as UTF-8 text, with `file:line: reason` for a byte that is not UTF-8.

Python's own decoding error names a byte offset and no file; every reader of user files (trace exports,
split files, predictions, config files) goes through these two functions instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


class TextFileError(ValueError):
    """The file is not UTF-8 text; the message is `file:line: reason`."""


def not_utf8(path: Path, line_number: int, byte: int, column: int) -> TextFileError:
    return TextFileError(
        f"{path}:{line_number}: not UTF-8 text (byte 0x{byte:02x} at column {column}); save the file as UTF-8"
    )


def utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number from 1, text with its newline) for each line; TextFileError at the first non-UTF-8 line."""
    with Path(path).open("rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise not_utf8(path, line_number, line[error.start], error.start + 1) from None
            yield line_number, text


def read_utf8(path: Path) -> str:
    """The whole file as text; TextFileError naming the line of the first non-UTF-8 byte."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line_start = data.rfind(b"\n", 0, error.start) + 1
        line_number = data.count(b"\n", 0, error.start) + 1
        raise not_utf8(path, line_number, data[error.start], error.start - line_start + 1) from None
