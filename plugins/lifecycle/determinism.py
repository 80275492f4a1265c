"""Ties: every choice a SELECT makes between rows must come out the same on every run.

PostgreSQL returns tied rows in whatever order the plan produced them, and the plan changes
with the data, `work_mem` and the statistics. A pick whose ORDER BY can tie (two orders at
the same `ordered_at`) therefore picks differently from one run to the next: a second
enrollment key, a second coupon, a different order credited with the revenue.

The rule (README, "Ties"): of two events at the same instant, the one with the smaller id came
first, so every ORDER BY that feeds a choice ends in a unique column. This module is a small
scanner that enforces it in segment and condition files. It checks

- `DISTINCT ON (...) ... ORDER BY ...` (and DISTINCT ON without ORDER BY),
- the window functions `row_number()`, `rank()`, `dense_rank()`, `ntile()`, `first_value()`,
  `last_value()`, `nth_value()`, `lag()`, `lead()` (`OVER (... ORDER BY ...)`, also through a
  named `WINDOW`),
- `ORDER BY ... LIMIT` / `FETCH FIRST` (and a LIMIT without ORDER BY, outside `EXISTS (...)`),
- lists built by `jsonb_agg`, `json_agg`, `array_agg`, `string_agg`, `jsonb_object_agg`,
  `json_object_agg`, `xmlagg` (their order reaches customers: a product list in an email),

and requires the ORDER BY's last term to be a column (optionally `alias.` qualified, optionally
cast with `::`) named `id`, `*_id` or `*_key`, or listed in the segment header's
`unique_columns:`, and not one of the DISTINCT ON / PARTITION BY columns (a column that defines
the group cannot break ties inside it). `ASC`/`DESC`/`NULLS FIRST|LAST`/`COLLATE` are allowed.
The name is a promise the analyst makes; the database test (tests/test_determinism.py) checks
the promise by running every SELECT under different plans.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass

WINDOW_FUNCTIONS = {"row_number", "rank", "dense_rank", "ntile", "first_value", "last_value", "nth_value",
                    "lag", "lead"}
LIST_AGGREGATES = {"jsonb_agg", "json_agg", "array_agg", "string_agg", "jsonb_object_agg", "json_object_agg",
                   "xmlagg"}
SET_OPERATORS = {"union", "intersect", "except"}
# Words that end an ORDER BY list at its own level.
ORDER_BY_END = {"limit", "offset", "fetch", "for", "rows", "range", "groups", "window"} | SET_OPERATORS
MODIFIERS = {"asc", "desc", "nulls", "first", "last"}

TOKEN = re.compile(
    r'"(?:[^"]|"")*"'            # quoted identifier
    r"|[A-Za-z_][A-Za-z0-9_$]*"  # word
    r"|\d+(?:\.\d+)?"            # number
    r"|::"                       # cast
    r"|:[A-Za-z_]\w*"            # bound parameter
    r"|[(),.;]"
    r"|[^\s\w]"                  # any other operator character
)


@dataclass(frozen=True)
class Finding:
    """One pick that can break ties differently from run to run."""

    line: int  # 1-based, in the text that was scanned (plus the caller's offset)
    construct: str  # e.g. "DISTINCT ON", "row_number()", "ORDER BY ... LIMIT"
    problem: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.construct}: {self.problem}"


def mask_comments_and_strings(sql: str) -> str:
    """The SQL with comments and string literals blanked out, same length and same lines."""
    out, i, n = [], 0, len(sql)

    def blank(text: str) -> str:
        return re.sub(r"[^\n]", " ", text)

    while i < n:
        ch, two = sql[i], sql[i:i + 2]
        if two == "--":
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(blank(sql[i:end]))
            i = end
        elif two == "/*":  # PostgreSQL block comments nest
            depth, j = 1, i + 2
            while j < n and depth:
                if sql.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif sql.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(blank(sql[i:j]))
            i = j
        elif ch == "'":
            backslash = i > 0 and sql[i - 1] in "eE" and (i < 2 or not (sql[i - 2].isalnum() or sql[i - 2] == "_"))
            j = i + 1
            while j < n:
                if backslash and sql[j] == "\\":
                    j += 2
                elif sql[j] == "'" and sql[j + 1:j + 2] == "'":
                    j += 2
                elif sql[j] == "'":
                    j += 1
                    break
                else:
                    j += 1
            out.append("'" + blank(sql[i + 1:j - 1]) + "'" if j - i >= 2 else blank(sql[i:j]))
            i = j
        elif ch == "$" and (m := re.match(r"\$([A-Za-z_]\w*)?\$", sql[i:])) and not (i and sql[i - 1].isalnum()):
            tag = m.group(0)
            end = sql.find(tag, i + len(tag))
            end = n if end < 0 else end + len(tag)
            out.append("''" + blank(sql[i + 2:end]))
            i = end
        elif ch == '"':  # quoted identifiers stay (a column may be called "Order Id")
            end = sql.find('"', i + 1)
            while end >= 0 and sql[end + 1:end + 2] == '"':
                end = sql.find('"', end + 2)
            end = n if end < 0 else end + 1
            out.append(sql[i:end])
            i = end
        else:  # plain SQL: copy up to the next character that may open a comment, string or identifier
            end = _PLAIN.search(sql, i + 1)
            end = n if end is None else end.start()
            out.append(sql[i:end])
            i = end
    return "".join(out)


_PLAIN = re.compile(r"[-/'$\"]")


class _Tokens:
    """Tokens of masked SQL with their paren depth (a '(' or ')' has the depth outside it)."""

    def __init__(self, masked: str):
        self.masked = masked
        self.text, self.pos, self.depth, self.match = [], [], [], {}
        stack, depth = [], 0
        for m in TOKEN.finditer(masked):
            tok = m.group(0)
            if tok == ")":
                depth = max(depth - 1, 0)
            self.text.append(tok if tok.startswith('"') else tok.lower())
            self.pos.append(m.start())
            self.depth.append(depth)
            if tok == "(":
                stack.append(len(self.text) - 1)
                depth += 1
            elif tok == ")" and stack:
                self.match[stack.pop()] = len(self.text) - 1
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", masked)]

    def __len__(self) -> int:
        return len(self.text)

    def at(self, i: int) -> str:
        return self.text[i] if 0 <= i < len(self.text) else ""

    def line(self, i: int) -> int:
        return bisect.bisect_right(self._line_starts, self.pos[min(i, len(self.pos) - 1)])

    def source(self, a: int, b: int) -> str:
        """Tokens [a, b) as written (comments and strings blanked)."""
        return " ".join(self.masked[self.pos[a]:self.pos[b - 1] + len(self.text[b - 1])].split())

    def is_order_by(self, i: int) -> bool:
        return self.at(i) == "order" and self.at(i + 1) == "by"

    def closing(self, i: int) -> int:
        return self.match.get(i, len(self.text))


def _split_terms(t: _Tokens, start: int, end: int) -> list[tuple[int, int]]:
    """Comma-separated terms in tokens [start, end) at the depth of `start`."""
    if start >= end:
        return []
    level, terms, first = t.depth[start], [], start
    for i in range(start, end):
        if t.text[i] == "," and t.depth[i] == level:
            terms.append((first, i))
            first = i + 1
    terms.append((first, end))
    return [(a, b) for a, b in terms if a < b]


def _order_by_end(t: _Tokens, start: int, stop: int) -> int:
    """Where an ORDER BY list that starts at `start` ends (exclusive), at most `stop`."""
    level = t.depth[start] if start < len(t) else 0
    for i in range(start, stop):
        if t.depth[i] < level or (t.depth[i] == level and (t.text[i] in ORDER_BY_END or t.text[i] == ";")):
            return i  # the enclosing ')' has a smaller depth
    return stop


def _column_of(t: _Tokens, a: int, b: int) -> tuple[str, str] | None:
    """(qualified text, bare name) when tokens [a, b) are a plain column (without modifiers)."""
    toks = t.text[a:b]
    while toks and toks[-1] in MODIFIERS:
        toks = toks[:-1]
    if "collate" in toks:
        toks = toks[:toks.index("collate")]
    if "::" in toks:
        toks = toks[:toks.index("::")]
    if not toks or len(toks) % 2 == 0:
        return None
    names, dots = toks[0::2], toks[1::2]
    if any(d != "." for d in dots) or not all(re.fullmatch(r'[a-z_][a-z0-9_$]*|"(?:[^"]|"")*"', n) for n in names):
        return None
    bare = names[-1].strip('"').lower() if names[-1].startswith('"') else names[-1]
    return ".".join(names), bare


def is_unique_name(name: str, unique_columns: Iterable[str] = ()) -> bool:
    name = name.lower()
    return name == "id" or name.endswith(("_id", "_key")) or name in {c.lower() for c in unique_columns}


def _same_column(x: tuple[str, str], y: tuple[str, str]) -> bool:
    if "." in x[0] and "." in y[0]:
        return x[0] == y[0]
    return x[1] == y[1]


class _Scanner:
    def __init__(self, sql: str, unique_columns: Iterable[str], line_offset: int):
        self.t = _Tokens(mask_comments_and_strings(sql))
        self.unique = tuple(unique_columns)
        self.offset = line_offset
        self.findings: list[Finding] = []
        self.checked_order_bys: set[int] = set()
        self.windows = self._named_windows()

    def add(self, i: int, construct: str, problem: str) -> None:
        self.findings.append(Finding(self.t.line(i) + self.offset, construct, problem))

    def check_order_by(self, construct: str, at: int, start: int, end: int, groups: list[tuple[int, int]]) -> None:
        """ORDER BY terms in tokens [start, end): the last must be a unique column outside `groups`."""
        if start in self.checked_order_bys:
            return
        self.checked_order_bys.add(start)
        terms = _split_terms(self.t, start, end)
        if not terms:
            self.add(at, construct, "ORDER BY is empty")
            return
        a, b = terms[-1]
        last = self.t.source(a, b)
        column = _column_of(self.t, a, b)
        keys = [k for k in (_column_of(self.t, ga, gb) for ga, gb in groups) if k]
        hint = ("add a unique tie-break as the last term (e.g. the table's id: of two events at the same "
                "instant, the smaller id came first), or list a unique column under unique_columns:")
        if column is None:
            self.add(a, construct, f"ORDER BY ends in {last!r}, an expression, not a unique column: {hint}")
        elif any(_same_column(column, k) for k in keys):
            self.add(a, construct, f"ORDER BY ends in {last!r}, a column of the group itself (DISTINCT ON / "
                                   f"PARTITION BY), so rows within the group tie: {hint}")
        elif not is_unique_name(column[1], self.unique):
            self.add(a, construct, f"ORDER BY ends in {last!r}, which can tie (not an id, *_id or *_key column "
                                   f"nor in unique_columns): {hint}")

    # ------------------------------------------------------------------ the constructs
    def scan(self) -> list[Finding]:
        t = self.t
        # Window functions first: a row_number() that passes numbers its rows uniquely, so its
        # alias (`... AS rank`) is a unique column for the lists and picks that order by it.
        for i in range(len(t)):
            if t.text[i] in WINDOW_FUNCTIONS and t.at(i + 1) == "(" and t.at(i - 1) != ".":
                self.window_function(i)
        for i in range(len(t)):
            word = t.text[i]
            if word == "distinct" and t.at(i + 1) == "on" and t.at(i + 2) == "(":
                self.distinct_on(i)
            elif word in LIST_AGGREGATES and t.at(i + 1) == "(" and t.at(i - 1) != ".":
                self.list_aggregate(i)
            elif word == "limit" or (word == "fetch" and t.at(i + 1) in {"first", "next"}):
                self.limit(i)
        return sorted(set(self.findings), key=lambda f: (f.line, f.construct, f.problem))

    def distinct_on(self, i: int) -> None:
        t = self.t
        close = t.closing(i + 2)
        groups = _split_terms(t, i + 3, close)
        level = t.depth[i]
        for j in range(close + 1, len(t)):
            if t.depth[j] < level or (t.depth[j] == level and (t.text[j] in SET_OPERATORS or t.text[j] == ";")):
                break
            if t.depth[j] == level and t.is_order_by(j):
                self.check_order_by("DISTINCT ON", i, j + 2, _order_by_end(t, j + 2, len(t)), groups)
                return
        self.add(i, "DISTINCT ON", "no ORDER BY: which row of each group is kept is arbitrary; order by the "
                                   "DISTINCT ON columns, then what decides, then a unique id")

    def window_function(self, i: int) -> None:
        t = self.t
        j = t.closing(i + 1) + 1
        if t.at(j) == "filter" and t.at(j + 1) == "(":
            j = t.closing(j + 1) + 1
        if t.at(j) != "over":
            return  # rank(x) WITHIN GROUP (...) is a hypothetical-set aggregate, not a pick
        name = f"{t.text[i]}()"
        if t.at(j + 1) == "(":
            spec = (j + 2, t.closing(j + 1))
        else:
            spec = self.windows.get(t.at(j + 1))
            if spec is None:
                self.add(i, name, f"window {t.at(j + 1)!r} is not defined in a WINDOW clause")
                return
        partition, order = self._window_parts(*spec)
        if order is None:
            self.add(i, name, "no ORDER BY in OVER (...): the numbering of tied rows is arbitrary; order by "
                              "what decides, then a unique id")
            return
        before = len(self.findings)
        self.check_order_by(name, i, order[0], order[1], partition)
        alias = self._alias_after(j + 1 if t.at(j + 1) != "(" else t.closing(j + 1))
        if t.text[i] == "row_number" and alias and len(self.findings) == before:
            self.unique += (alias,)

    def _alias_after(self, k: int) -> str | None:
        """The name given to the expression ending at token k: `... ) AS rank`, `...)::integer AS rank`."""
        t = self.t
        k += 1
        while t.at(k) == ")" or t.at(k) == "::" or (t.at(k - 1) == "::" and re.fullmatch(r"[a-z_]\w*", t.at(k))):
            k += 1
        return t.at(k + 1) if t.at(k) == "as" and re.fullmatch(r"[a-z_]\w*", t.at(k + 1)) else None

    def _window_parts(self, start: int, end: int) -> tuple[list[tuple[int, int]], tuple[int, int] | None]:
        """PARTITION BY terms and the ORDER BY range of a window spec in tokens [start, end)."""
        t = self.t
        partition, order = [], None
        if start < end and t.text[start] in self.windows and t.text[start] not in {"partition", "order"}:
            partition, order = self._window_parts(*self.windows[t.text[start]])  # OVER (base_window ...)
            start += 1
        level = t.depth[start] if start < end else 0
        for k in range(start, end):
            if t.depth[k] != level:
                continue
            if t.text[k] == "partition" and t.at(k + 1) == "by":
                stop = next((x for x in range(k + 2, end) if t.depth[x] == level and t.is_order_by(x)), end)
                stop = _order_by_end(t, k + 2, stop)
                partition = _split_terms(t, k + 2, stop)
            elif t.is_order_by(k):
                order = (k + 2, _order_by_end(t, k + 2, end))
        return partition, order

    def _named_windows(self) -> dict[str, tuple[int, int]]:
        t, found = self.t, {}
        for i in range(len(t)):
            if t.text[i] != "window":
                continue
            k = i + 1
            while t.at(k + 1) == "as" and t.at(k + 2) == "(":
                close = t.closing(k + 2)
                found.setdefault(t.text[k], (k + 3, close))
                if t.at(close + 1) != ",":
                    break
                k = close + 2
        return found

    def list_aggregate(self, i: int) -> None:
        t = self.t
        close = t.closing(i + 1)
        if t.at(i + 2) == "distinct":
            return  # DISTINCT lists are sorted by their own values
        level = t.depth[i + 1] + 1
        name = f"{t.text[i]}(... ORDER BY ...)"
        for k in range(i + 2, close):
            if t.depth[k] == level and t.is_order_by(k):
                self.check_order_by(name, i, k + 2, close, [])
                return
        self.add(i, f"{t.text[i]}()", "no ORDER BY inside the aggregate: the list's order can change from run "
                                      "to run; add ORDER BY ..., ending in a unique id")

    def limit(self, i: int) -> None:
        t = self.t
        if t.at(i) == "limit" and t.at(i + 1) in {"0", "all"}:
            return
        level, start = t.depth[i], 0
        for k in range(i - 1, -1, -1):
            if t.depth[k] < level or (t.depth[k] == level and (t.text[k] in SET_OPERATORS or t.text[k] == ";")):
                start = k + 1
                break
        order = next((k for k in range(i - 1, start - 1, -1) if t.depth[k] == level and t.is_order_by(k)), None)
        if order is None:
            opener = start - 1
            if opener >= 0 and t.text[opener] == "(" and t.at(opener - 1) == "exists":
                return  # EXISTS (... LIMIT 1) asks whether a row exists, not which
            self.add(i, "LIMIT", "LIMIT without ORDER BY keeps arbitrary rows; order by what decides, then a "
                                 "unique id")
            return
        self.check_order_by("ORDER BY ... LIMIT", order, order + 2, i, [])


def check_sql(sql: str, unique_columns: Iterable[str] = (), line_offset: int = 0) -> list[Finding]:
    """Every tie-prone pick in `sql`; line numbers are those of `sql` plus `line_offset`."""
    return _Scanner(sql, unique_columns, line_offset).scan()
