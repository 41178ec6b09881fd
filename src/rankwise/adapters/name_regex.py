"""Match module names against a user's ``target_modules`` regex in time linear in the name's length.

Python's `re` backtracks: ``([a-z_.0-9]+)+X`` takes about 2**len(name) steps on a name without an X,
so one bad config hung injection for hours. Here a pattern is parsed with the standard library's own
regex parser and, unless it is plainly safe for `re`, run on a Thompson NFA (Thompson 1968; Cox,
"Regular Expression Matching Can Be Simple And Fast", 2007): the simulation keeps the *set* of NFA
states reachable after each character, so a name of n characters costs O(n * m) for a pattern of m
states, whatever the pattern.

* Plainly safe (no repeat of more than one item nested inside another such repeat, no alternation
  inside such a repeat, at most 3 such repeats): `re.fullmatch` itself, the fast path.
* Otherwise: the NFA, which supports literals, ``.``, classes (``[...]``, ``\\d \\w \\s`` and their
  negations), groups, alternation, ``* + ? {m,n}`` (greedy or lazy: same language), ``^`` and ``$``.
* Features that need backtracking (backreferences, lookarounds, conditionals), the ``i``/``a``/``L``
  flags, and bounded repeats that would expand past `MAX_STATES` states are refused with a
  ConfigError on ``target_modules`` (use a list of names, ``exclude_modules``, or spell the cases out).

Results equal ``re.fullmatch(pattern, name) is not None`` (tests compare the two on many patterns).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

try:  # Python >= 3.11
    from re import _constants as C  # noqa: N812
    from re import _parser as P  # noqa: N812
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as C  # type: ignore[no-redef]  # noqa: N812
    import sre_parse as P  # type: ignore[no-redef]  # noqa: N812

from rankwise.errors import ConfigError

MAX_STATES = 20_000
_SAFE_REPEATS = 3
_OK_FLAGS = re.UNICODE | re.MULTILINE | re.DOTALL | re.VERBOSE  # names hold no newline: M and S are inert
_REPEATS = {C.MAX_REPEAT, C.MIN_REPEAT} | ({C.POSSESSIVE_REPEAT} if hasattr(C, "POSSESSIVE_REPEAT") else set())


class _Unsupported(Exception):
    pass


# -- NFA: states are ints; kind[s] in {"char", "split", "at", "match"} ------------------------------
class _NFA:
    def __init__(self, flags: int) -> None:
        self.dotall = bool(flags & re.DOTALL)
        self.kind: list[str] = []
        self.arg: list[Any] = []
        self.out: list[list[int]] = []

    def state(self, kind: str, arg: Any = None) -> int:
        if len(self.kind) >= MAX_STATES:
            raise _Unsupported(f"a pattern that expands to at most {MAX_STATES:,} states")
        self.kind.append(kind)
        self.arg.append(arg)
        self.out.append([])
        return len(self.kind) - 1

    # A fragment is (start state, list of states whose `out` must be patched to the next fragment).
    def build(self, items: Any) -> tuple[int, list[int]]:
        start = self.state("split")  # an empty fragment: a split with one exit, patched later
        ends = [start]
        for op, av in items:
            frag_start, frag_ends = self.item(op, av)
            for e in ends:
                self.out[e].append(frag_start)
            ends = frag_ends
        return start, ends

    def item(self, op: Any, av: Any) -> tuple[int, list[int]]:
        if op in (C.LITERAL, C.NOT_LITERAL, C.ANY, C.IN):
            s = self.state("char", self.predicate(op, av))
            return s, [s]
        if op is C.SUBPATTERN:
            _group, add_flags, del_flags, sub = av
            if add_flags & ~_OK_FLAGS:
                raise _Unsupported("a pattern without the i, a or L flags (spell the cases out: [Qq])")
            return self.build(sub)
        if op is C.BRANCH:
            start = self.state("split")
            ends: list[int] = []
            for alt in av[1]:
                s, e = self.build(alt)
                self.out[start].append(s)
                ends += e
            return start, ends
        if op in _REPEATS:
            low, high, sub = av
            start = self.state("split")
            ends = [start]
            for _ in range(low):  # the mandatory copies
                s, e = self.build(sub)
                for x in ends:
                    self.out[x].append(s)
                ends = e
            if high is C.MAXREPEAT:  # a loop: sub then back to the loop's split
                loop = self.state("split")
                for x in ends:
                    self.out[x].append(loop)
                s, e = self.build(sub)
                self.out[loop].append(s)
                for x in e:
                    self.out[x].append(loop)
                return start, [loop]
            exits = list(ends)
            for _ in range(high - low):  # optional copies: each may be skipped to the exit
                s, e = self.build(sub)
                for x in ends:
                    self.out[x].append(s)
                ends = e
                exits += e
            return start, exits
        if op is C.AT:
            if av in (C.AT_BEGINNING, C.AT_BEGINNING_STRING):
                s = self.state("at", "begin")
            elif av in (C.AT_END, C.AT_END_STRING):
                s = self.state("at", "end")
            else:
                raise _Unsupported(r"a pattern without \b or \B")
            return s, [s]
        raise _Unsupported(
            "a pattern without backreferences, lookarounds or conditionals (they need backtracking; "
            "use exclude_modules to leave names out)"
        )

    def predicate(self, op: Any, av: Any) -> Callable[[str], bool]:
        if op is C.LITERAL:
            ch = chr(av)
            return lambda c: c == ch
        if op is C.NOT_LITERAL:
            ch = chr(av)
            return lambda c: c != ch
        if op is C.ANY:
            return (lambda c: True) if self.dotall else (lambda c: c != "\n")
        negate = bool(av) and av[0][0] is C.NEGATE
        tests = [self.set_item(o, a) for o, a in (av[1:] if negate else av)]
        if negate:
            return lambda c: not any(t(c) for t in tests)
        return lambda c: any(t(c) for t in tests)

    @staticmethod
    def set_item(op: Any, av: Any) -> Callable[[str], bool]:
        if op is C.LITERAL:
            ch = chr(av)
            return lambda c: c == ch
        if op is C.RANGE:
            lo, hi = av
            return lambda c: lo <= ord(c) <= hi
        if op is C.CATEGORY:
            word = lambda c: c.isalnum() or c == "_"  # noqa: E731 - sre's unicode \w
            table: dict[Any, Callable[[str], bool]] = {
                C.CATEGORY_DIGIT: str.isdecimal,
                C.CATEGORY_NOT_DIGIT: lambda c: not c.isdecimal(),
                C.CATEGORY_WORD: word,
                C.CATEGORY_NOT_WORD: lambda c: not word(c),
                C.CATEGORY_SPACE: lambda c: bool(re.fullmatch(r"\s", c)),
                C.CATEGORY_NOT_SPACE: lambda c: not re.fullmatch(r"\s", c),
            }
            if av in table:
                return table[av]
        raise _Unsupported("a character class of literals, ranges and \\d \\w \\s")


def _multiplying(op: Any, av: Any) -> bool:
    return op in _REPEATS and (av[1] is C.MAXREPEAT or av[1] > 1)


def _plainly_safe(items: Any) -> bool:
    """No repeat (of > 1) inside another, no alternation inside one, at most 3 of them: `re` is fast."""
    count = 0

    def walk(items: Any, inside: bool) -> bool:
        nonlocal count
        for op, av in items:
            if _multiplying(op, av):
                count += 1
                if inside or not walk(av[2], True):
                    return False
            elif op is C.SUBPATTERN:
                if not walk(av[3], inside):
                    return False
            elif op is C.BRANCH:
                if inside or not all(walk(alt, inside) for alt in av[1]):
                    return False
            elif op not in (C.LITERAL, C.NOT_LITERAL, C.ANY, C.IN, C.AT) and op not in _REPEATS:
                return False  # backreferences, lookarounds, atomic groups...: not judged here
        return True

    return walk(items, False) and count <= _SAFE_REPEATS


class NamePattern:
    """A compiled ``target_modules`` regex; ``pattern.fullmatch(name)`` is linear-time."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        try:
            parsed = P.parse(pattern)
        except re.error as exc:
            raise ConfigError("target_modules", pattern, f"a valid regular expression ({exc})") from exc
        flags = parsed.state.flags
        self._re = re.compile(pattern) if _plainly_safe(parsed) else None
        if self._re is not None:
            return
        try:
            if flags & ~_OK_FLAGS:
                raise _Unsupported("a pattern without the i, a or L flags (spell the cases out: [Qq])")
            self._nfa = _NFA(flags)
            self._start, ends = self._nfa.build(parsed)
            match = self._nfa.state("match")
            for e in ends:
                self._nfa.out[e].append(match)
        except _Unsupported as exc:
            raise ConfigError(
                "target_modules",
                pattern,
                f"{exc}: names are matched by a linear-time automaton because this pattern could make "
                "Python's backtracking `re` run for hours",
            ) from None

    def _closure(self, states: list[int], pos: int, n: int) -> set[int]:
        kind, out = self._nfa.kind, self._nfa.out
        seen: set[int] = set()
        stack = list(states)
        while stack:
            s = stack.pop()
            if s in seen:
                continue
            if kind[s] == "at" and not (pos == 0 if self._nfa.arg[s] == "begin" else pos == n):
                continue
            seen.add(s)
            if kind[s] in ("split", "at"):
                stack.extend(out[s])
        return seen

    def fullmatch(self, name: str) -> bool:
        if self._re is not None:
            return self._re.fullmatch(name) is not None
        kind, arg, out = self._nfa.kind, self._nfa.arg, self._nfa.out
        n = len(name)
        current = self._closure([self._start], 0, n)
        for i, ch in enumerate(name):
            step = [t for s in current if kind[s] == "char" and arg[s](ch) for t in out[s]]
            if not step:
                return False
            current = self._closure(step, i + 1, n)
        return any(kind[s] == "match" for s in current)


@functools.lru_cache(maxsize=64)
def compile_name_pattern(pattern: str) -> NamePattern:
    """`NamePattern` of `pattern`, cached (injection matches every module name against one pattern)."""
    return NamePattern(pattern)
