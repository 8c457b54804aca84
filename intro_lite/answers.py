"""Answer text helpers in pure Python (no math-verify import, safe in any process): the last
``\\boxed{}`` of a text and a gold answer without its ``$`` delimiters."""

from __future__ import annotations

import re

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def _matching_brace(text: str, open_pos: int) -> int | None:
    """Index of the '}' closing the '{' at open_pos, or None if unbalanced.

    A backslash escapes the next character, so literal braces ``\\{``/``\\}``
    (e.g. ``\\left\\{ ... \\right.``) do not count towards the nesting depth.
    """
    depth = 0
    i = open_pos
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``), brace-balanced.

    Returns None if there is none. An unterminated box (e.g. a generation cut
    off inside ``\\boxed{``) is skipped in favour of the previous complete one,
    which is also what math-verify's extraction ends up doing.
    """
    end = len(text)
    while True:
        start = max(text.rfind(cmd, 0, end) for cmd in _BOX_COMMANDS)
        if start < 0:
            return None
        cmd_len = len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox")
        brace = start + cmd_len
        while brace < len(text) and text[brace].isspace():
            brace += 1
        if brace < len(text) and text[brace] == "{":
            close = _matching_brace(text, brace)
            if close is not None:
                return text[brace + 1 : close]
        elif brace > start + cmd_len and brace < len(text):
            # MATH also writes `\boxed 9` (a space, then one token up to `$` or whitespace).
            m = re.match(r"[^\s$]+", text[brace:])
            if m:
                return m.group().rstrip(".,")
        end = start


def strip_math_delimiters(gold: str) -> str:
    """Drop surrounding ``$...$`` / ``$$...$$`` from a gold answer (but not an escaped ``\\$``)."""
    s = gold.strip()
    while len(s) >= 2 and s.startswith("$") and s.endswith("$") and not s.endswith("\\$"):
        s = s[1:-1].strip()
    return s
