"""The regular expressions of checks (`expect.stdout`): RE2, never backtracking.

A lab file comes from a stranger; a Python `re` pattern such as `^(a+)+$` takes exponential time on
output like "aaaa…b" and, run on the worker's event loop, froze every lab of that worker. RE2
matches in time linear in the output, so no pattern can do that; it refuses what needs backtracking
(backreferences, lookaround), which is reported when the lab file is validated.

Semantics (docs/catalog.md): the pattern is *searched* in the check's stdout with ONE trailing newline
removed; `^` and `$` are the start and end of that text, so `^ok$` matches the output of `echo ok`
as it did with Python's `re`. Use `(?m)` for per-line anchors and `(?s)` to let `.` match newlines.

Pure (no I/O): the loader and the workflows' models validate with it, the check activity matches.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

MAX_PATTERN_CHARS = 1024
_RE2_MAX_MEM = 8 << 20  # RE2's default program budget; a pattern needing more is refused at validation


class BadPattern(ValueError):
    pass


@lru_cache(maxsize=512)
def compile_pattern(pattern: str) -> Any:
    """The compiled RE2 program, or BadPattern naming why (no RE2 error log on stderr)."""
    import re2

    if len(pattern) > MAX_PATTERN_CHARS:
        raise BadPattern(f"is {len(pattern)} characters long; at most {MAX_PATTERN_CHARS}")
    options = re2.Options()
    options.log_errors = False
    options.max_mem = _RE2_MAX_MEM
    try:
        return re2.compile(pattern, options=options)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        reason = reason.split(": ", 1)[0] if ": " in reason else reason  # RE2 repeats the pattern after ': '
        hint = " (RE2 has no backreferences or lookaround)" if "escape" in reason or "(?" in reason else ""
        raise BadPattern(f"is not a valid regular expression (RE2 syntax): {reason}{hint}") from None


def stdout_matches(pattern: str, stdout: str) -> bool:
    """Whether `pattern` is found in `stdout` (one trailing newline removed; see the module doc)."""
    text = stdout[:-1] if stdout.endswith("\n") else stdout
    return compile_pattern(pattern).search(text) is not None
