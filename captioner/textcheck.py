"""Text guards: captions and references whose characters were damaged on the way.

Two kinds of damage are flagged (`text_flags`):

* ``replacement_char``: the text holds U+FFFD. A model emits it when its tokens end inside a
  multi-byte UTF-8 character (the bytes never form a character), and any decoder run with
  ``errors="replace"`` leaves it where input bytes were not valid.
* ``mojibake``: UTF-8 text that was decoded with another codec (`mojibake_encoding`):

  - a single-byte code page, Latin-1 or Windows-1252 mostly ("ë°”ë‹¤" for "바다"): ftfy
    recognises these and its verdict counts when undoing it re-decodes bytes as UTF-8, so
    legitimate accented text ("café") is not flagged. Where the decoder dropped the bytes
    Windows-1252 leaves undefined, ftfy may leave the text alone; two whole Korean syllables
    still readable in its bytes are then the evidence.
  - CP949, the Korean Windows code page, e.g. Excel opening a UTF-8 CSV ("諛붾떎" for "바다").
    ftfy does not try CP949, so `_cp949_mojibake` does; see there for the rule.

Limits: CP949 mojibake of very short texts (one or two Korean syllables) is mostly not
recognised: too few bytes survive to tell it from rare but legitimate syllables. Neither is
non-Korean UTF-8 read as CP949 ("café" as "caf챕"), nor UTF-8 read as EUC-KR, which lacks CP949's
extension: that text is flagged for its U+FFFD when the decoder replaced what it could not read,
and not at all when it dropped it.
"""

from __future__ import annotations

import re
from typing import Any

import ftfy

REPLACEMENT_CHAR = "replacement_char"
MOJIBAKE = "mojibake"

# UTF-8 encodes U+AC00..U+D7A3 (Hangul syllables) as EA..ED followed by two continuation bytes.
_UTF8_KOREAN_RUN = re.compile(rb"(?:[\xea-\xed][\x80-\xbf][\x80-\xbf]){2,}")
# ftfy's explanation steps that re-decode text as UTF-8.
_UTF8_DECODES = {("decode", "utf-8"), ("decode", "utf-8-variants"), ("apply", "decode_inconsistent_utf8")}
# Each character's byte in Latin-1 or Windows-1252; characters of neither map to no byte (0).
_SINGLE_BYTE: dict[str, int] = {chr(b): b for b in range(256)} | {
    bytes([b]).decode("cp1252"): b for b in range(0x80, 0xA0) if b not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)
}


def text_flags(text: str | None) -> list[str]:
    """What is wrong with the characters of ``text``: a subset of ``["replacement_char", "mojibake"]``.

    Empty for clean text (and for None or ""), in this fixed order, so equal findings give equal lists.
    """
    if not text:
        return []
    flags = []
    if "\ufffd" in text:
        flags.append(REPLACEMENT_CHAR)
    if looks_like_mojibake(text):
        flags.append(MOJIBAKE)
    return flags


def record_flags(record: dict[str, Any]) -> list[str]:
    """A caption record's `text_flags`; for a record written before the field existed, its caption's."""
    flags = record.get("text_flags")
    return list(flags) if flags is not None else text_flags(record.get("caption"))


def looks_like_mojibake(text: str) -> bool:
    """True when ``text`` looks like UTF-8 decoded with the wrong codec (see `mojibake_encoding`)."""
    return mojibake_encoding(text) is not None


def mojibake_encoding(text: str) -> str | None:
    """The codec UTF-8 ``text`` seems to have been decoded with ("cp949", "windows-1252", "latin-1", ...), or None.

    The text is judged as it is, not NFC-normalised: NFC maps CP949's compatibility ideographs to
    other characters, whose bytes would no longer be the UTF-8 that was misread.
    """
    if text.isascii():
        return None
    if _cp949_mojibake(text):
        return "cp949"
    return _single_byte_mojibake(text)


def _single_byte_mojibake(text: str) -> str | None:
    """The single-byte code page UTF-8 ``text`` was read with, or None."""
    fixed = ftfy.fix_encoding_and_explain(text)
    if fixed.text != text:  # given only U+FFFD and ASCII, ftfy "fixes" text into itself
        encoding = None
        for action, value in fixed.explanation or []:
            if action == "encode":
                encoding = value.removeprefix("sloppy-")
            if (action, value) in _UTF8_DECODES:
                # decode_inconsistent_utf8 fixes pieces in place, without naming a code page.
                return encoding or "latin-1/windows-1252"
    if _longest_utf8_korean(bytes(_SINGLE_BYTE.get(c, 0) for c in text)) >= 2:
        return "windows-1252"
    return None


def _is_syllable(char: str) -> bool:
    return "\uac00" <= char <= "\ud7a3"


def _is_misread_lead(char: str) -> bool:
    """True for a Hanja whose CP949 code starts with EA..ED, as a misread UTF-8 Korean lead byte does."""
    if not ("\u4e00" <= char <= "\u9fff" or "\uf900" <= char <= "\ufaff"):
        return False
    code = char.encode("cp949", errors="replace")
    return len(code) == 2 and 0xEA <= code[0] <= 0xED


def _in_ks_x_1001(syllable: str) -> bool:
    """True for the 2,350 Hangul syllables of KS X 1001 (CP949 bytes B0..C8, A1..FE)."""
    code = syllable.encode("cp949", errors="replace")
    return len(code) == 2 and 0xB0 <= code[0] <= 0xC8 and code[1] >= 0xA1


def _cp949_mojibake(text: str) -> bool:
    """True when ``text`` looks like UTF-8 Korean decoded as CP949.

    Read as CP949, the UTF-8 bytes of Korean pair up into Hanja (a UTF-8 lead byte EA..ED with
    the next byte) and into Hangul syllables of CP949's extension (two UTF-8 continuation bytes),
    the 8,822 syllables outside KS X 1001 that ordinary Korean text almost never uses: "바다"
    becomes "諛붾떎". The rule asks for both kinds of evidence:

    1. at least two such rare syllables, and at least half of the text's Hangul syllables rare
       (legitimate text may hold one "똠" or "햏", not mostly such syllables); and
    2. either the text, encoded back to CP949, holds the UTF-8 of two Hangul syllables in a row
       (six bytes in that exact shape; one of the two UTF-8 lead bytes EA..ED must then be a
       CP949 lead byte, which only Hanja have, so text without Hanja never shows them and text
       with Hanja by rare accident only), or it has at least three rare syllables, two thirds
       of its syllables, beside a Hanja whose CP949 code starts with EA..ED (what a misread
       UTF-8 lead byte gives; one in thirteen Hanja).

    Clause 2's second half covers mojibake whose lost bytes (a decoder dropping or replacing
    what it could not pair) broke every two-syllable run.
    """
    syllables = [c for c in text if _is_syllable(c)]
    rare = sum(1 for c in syllables if not _in_ks_x_1001(c))
    if rare < 2 or 2 * rare < len(syllables):
        return False
    if _longest_utf8_korean(text.encode("cp949", errors="replace")) >= 2:
        return True
    return rare >= 3 and 3 * rare >= 2 * len(syllables) and any(_is_misread_lead(c) for c in text)


def _longest_utf8_korean(data: bytes) -> int:
    """The most Hangul syllables in a row that ``data`` holds as valid UTF-8."""
    longest = 0
    for match in _UTF8_KOREAN_RUN.finditer(data):
        run = match.group()
        count = 0
        for i in range(0, len(run), 3):
            try:
                char = run[i : i + 3].decode("utf-8")
            except UnicodeDecodeError:  # ED A0..BF: a surrogate, never valid UTF-8
                char = ""
            count = count + 1 if _is_syllable(char) else 0
            longest = max(longest, count)
    return longest
