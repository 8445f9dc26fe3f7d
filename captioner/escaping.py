"""Text from outside (file names, captions, references) made safe for where a person sees it.

File names may hold any byte but "/" and NUL, and captions and references are model output or
third-party files. Shown raw, they can act on what shows them:

* a terminal or a log file (`printable`): ESC starts a terminal command (``\\x1b[2J`` clears the
  screen, others retitle the window or hide text), CR and LF forge lines that look like the
  program's own. Control characters (C0, DEL, C1) are shown as ``\\n``, ``\\r``, ``\\t``,
  ``\\xNN``; every other character, Korean included, is kept. `install_log_escaping` applies this
  to the values formatted into every log record of the process.
* a spreadsheet (`spreadsheet_csv`, the one CSV writer of captioner's tables): a CSV cell starting
  with ``=``, ``+``, ``-``, ``@``, tab or CR is run as a formula by Excel, LibreOffice and Google
  Sheets (``=HYPERLINK(...)``, ``=cmd|...``). Such a cell gets a leading ``'`` (the OWASP advice for
  CSV injection, `spreadsheet_cell`), which a spreadsheet shows as text and hides; a program
  reading the CSV sees the quote. Parquet and JSONL hold text as it is.

Undecodable file-name bytes (lone surrogates) are `captioner.sources.safe_text`'s concern;
`printable` applies it first, so any name can be written to a UTF-8 stream.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

from captioner.sources import safe_text

# C0 controls, DEL, and the C1 controls (U+0080-U+009F, which some terminals obey as ESC + letter).
CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f]")
NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# JSON escapes C0 itself; DEL and C1 are legal raw in JSON strings, so `printable_json` escapes them.
JSON_RAW_CONTROLS = re.compile("[\x7f-\x9f]")
# Cell starts a spreadsheet reads as a formula (OWASP, "CSV Injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
INSTALLED: list[Any] = []  # the record factory `install_log_escaping` installed in this process, once


def printable(text: str, keep: str = "") -> str:
    """`text` with control characters shown as ``\\n``, ``\\r``, ``\\t`` or ``\\xNN``; other characters kept.

    `keep` names control characters left as they are (a log message's own line breaks, say).
    """
    text = safe_text(text)

    def shown(match: re.Match[str]) -> str:
        char = match.group()
        if char in keep:
            return char
        return NAMED_ESCAPES.get(char, f"\\x{ord(char):02x}")

    return CONTROL_CHARS.sub(shown, text)


def printable_json(value: Any, indent: int | None = None) -> str:
    """`value` as JSON (UTF-8 text, Korean unescaped) that is safe on a terminal and parses to the same value."""
    text = json.dumps(value, ensure_ascii=False, indent=indent)
    return JSON_RAW_CONTROLS.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def spreadsheet_cell(value: Any) -> Any:
    """`value`, with a leading ``'`` when it is text a spreadsheet would run as a formula; other values as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def spreadsheet_csv(frame: Any) -> str:
    """The pandas DataFrame `frame` as CSV text (no index) whose text cells are `spreadsheet_cell`s.

    Only text cells change: numbers (a negative score, say) stay numbers. Rows end in CRLF (RFC
    4180): Python's csv writer (3.11) quotes a field holding a lone CR only when the row ending
    holds one, and an unquoted CR in a caption splits its row for every reader.
    """
    from pandas.api.types import is_object_dtype, is_string_dtype

    frame = frame.copy()
    for column in frame.columns:
        if is_object_dtype(frame[column]) or is_string_dtype(frame[column]):
            frame[column] = frame[column].map(spreadsheet_cell)
    return frame.to_csv(index=False, lineterminator="\r\n")


class PrintableText(str):
    """A log argument with its control characters escaped; ``%r`` still shows the original's repr.

    repr already escapes control characters, and escaping them again would double the backslashes.
    """

    original: Any

    def __new__(cls, original: Any, text: str) -> PrintableText:
        """`text` (the escaped form of `original`) as a str that remembers `original`."""
        shown = super().__new__(cls, text)
        shown.original = original
        return shown

    def __repr__(self) -> str:
        return repr(self.original)


def printable_arg(value: Any) -> Any:
    """A log argument as it is, or a `PrintableText` when its text (str, path, exception) holds control characters.

    Other values are left alone: their %d/%f formatting must keep working, and their str() may
    be costly (a DataFrame) or is their repr (lists, dicts), which escapes control characters.
    """
    if not isinstance(value, (str, os.PathLike, BaseException)):
        return value
    try:
        text = os.fsdecode(value) if isinstance(value, os.PathLike) else str(value)
    except Exception:  # noqa: BLE001 - a broken __str__ is the handler's to report, not the caller's
        return value
    shown = printable(text)
    return PrintableText(value, shown) if shown != text else value


def escape_record(record: logging.LogRecord) -> None:
    """Escape the values a log record formats into its message (see `printable_arg`).

    The message template is the program's own and may break lines on purpose; when there are no
    arguments it may have been formatted already (an f-string in a library), so its escape
    sequences are escaped, and only its line breaks and tabs kept.
    """
    args = record.args
    if isinstance(args, Mapping):
        record.args = {key: printable_arg(value) for key, value in args.items()}
    elif isinstance(args, tuple) and args:
        record.args = tuple(printable_arg(value) for value in args)
    elif isinstance(record.msg, str):
        record.msg = printable(record.msg, keep="\n\t")


def install_log_escaping() -> None:
    """Escape every log record made in this process from now on (`escape_record`); calling it again does nothing.

    A record factory, not a handler's filter or formatter: Celery's worker replaces the root
    logger's handlers, and vLLM configures its own, but every record is made by the factory.
    """
    # A flag, not a look at the current factory: vLLM wraps whatever factory it finds in its own.
    if INSTALLED:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        escape_record(record)
        return record

    logging.setLogRecordFactory(factory)
    INSTALLED.append(factory)
