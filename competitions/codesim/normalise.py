"""Python source normalisation for code-as-text models: comments and docstrings removed with Python's own
tokenizer (so a `#` inside a string stays), blank lines and trailing spaces dropped.

A file that does not tokenize (an unterminated string, a bad dedent, Python 2 backticks, an undecodable byte)
falls back to a plain text rule (drop lines that start with `#`) and is counted in `Normalizer.fallbacks`; it is
never an error. Tokenizing is not parsing: a file with a syntax error that still tokenizes (`print "x"`,
`def f(:`) is stripped exactly, token by token.
"""
from __future__ import annotations

import io
import math
import tokenize
from dataclasses import dataclass, field

# Tokens that may stand before a statement: a bare string there is a docstring (or a string used as a comment).
_STATEMENT_START = {tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING}
_SKIP = {tokenize.NL, tokenize.COMMENT}


class SourceError(ValueError):
    """The text does not tokenize as Python."""


def decode_source(data: bytes) -> tuple[str, bool]:
    """Bytes of a .py file -> (text, decoded cleanly). UTF-8 (with or without BOM), else the PEP 263 coding line,
    else UTF-8 with U+FFFD for the bad bytes (and False)."""
    try:
        return data.decode("utf-8-sig"), True
    except UnicodeDecodeError:
        pass
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        return data.decode(encoding), True
    except (SyntaxError, LookupError, UnicodeDecodeError):
        return data.decode("utf-8", errors="replace"), False


def _tokens(source: str) -> list[tokenize.TokenInfo]:
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError) as e:  # IndentationError is a SyntaxError
        raise SourceError(str(e)) from None
    for t in tokens:
        if t.type == tokenize.ERRORTOKEN and t.string.strip():
            raise SourceError(f"line {t.start[0]}: cannot tokenize {t.string!r}")
    return tokens


def strip_python(source: str, comments: bool = True, docstrings: bool = True) -> str:
    """Remove comments and/or docstrings (every statement that is only a string literal) by token positions.
    Raises SourceError when the text does not tokenize."""
    source = source.replace("\r\n", "\n").replace("\r", "\n")
    tokens = _tokens(source)
    spans = []  # ((row, col), (row, col)) to delete
    significant = [t for t in tokens if t.type not in _SKIP]
    if comments:
        spans += [(t.start, t.end) for t in tokens if t.type == tokenize.COMMENT]
    if docstrings:
        i = 0
        while i < len(significant):
            t = significant[i]
            before = significant[i - 1].type if i else tokenize.ENCODING
            if t.type == tokenize.STRING and before in _STATEMENT_START:
                j = i
                while j + 1 < len(significant) and significant[j + 1].type == tokenize.STRING:
                    j += 1  # implicit concatenation: "a" "b"
                after = significant[j + 1].type if j + 1 < len(significant) else tokenize.ENDMARKER
                if after in (tokenize.NEWLINE, tokenize.ENDMARKER):
                    spans.append((t.start, significant[j].end))
                    i = j
            i += 1
    if not spans:
        return source
    lines = io.StringIO(source).readlines()
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))

    def at(pos):
        return offsets[pos[0] - 1] + pos[1]

    out, cursor = [], 0
    for start, end in sorted(spans):
        out.append(source[cursor:at(start)])
        cursor = at(end)
    out.append(source[cursor:])
    return "".join(out)


def strip_comment_lines(source: str) -> str:
    """The plain text rule for text that does not tokenize: drop the lines whose first non-blank is `#`."""
    return "\n".join(line for line in source.replace("\r\n", "\n").replace("\r", "\n").split("\n")
                     if not line.lstrip().startswith("#"))


def tidy_lines(text: str, blank_lines: bool = True, trailing_space: bool = True) -> str:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if trailing_space:
        lines = [line.rstrip() for line in lines]
    if blank_lines:
        lines = [line for line in lines if line.strip()]
    return "\n".join(lines)


@dataclass
class Normalizer:
    """Callable text -> normalised text; each step can be switched off. Counts the texts that fell back to the
    plain text rule (`fallbacks`) and caches results (the same program often appears in many pairs)."""
    comments: bool = True
    docstrings: bool = True
    blank_lines: bool = True
    trailing_space: bool = True
    fallbacks: int = 0
    _cache: dict = field(default_factory=dict, repr=False)

    def __call__(self, text) -> str:
        text = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)  # NaN: empty cell
        if text not in self._cache:
            self._cache[text] = self._normalise(text)
        return self._cache[text]

    def _normalise(self, text: str) -> str:
        if self.comments or self.docstrings:
            try:
                text = strip_python(text, self.comments, self.docstrings)
            except SourceError:
                self.fallbacks += 1
                text = strip_comment_lines(text) if self.comments else text
        return tidy_lines(text, self.blank_lines, self.trailing_space)
