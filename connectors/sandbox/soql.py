"""The SOQL subset the connectors use, parsed and compiled to Python predicates.

    SELECT f1, f2, Rel.Field | COUNT() FROM Object
    [WHERE cond]  cond := cond AND cond | cond OR cond | NOT cond | (cond)
                        | field (= != <> < > <= >=) literal | field [NOT] IN (lit, ...) | field LIKE 'p%'
    [ORDER BY field [ASC|DESC] [NULLS FIRST|LAST], ...] [LIMIT n] [OFFSET n]

Literals: 'strings' (backslash escapes), numbers, true/false/null, unquoted dates
(2024-01-31) and datetimes (2024-01-31T00:00:00Z, ...+0000, ...+05:00), and the date
literals TODAY, YESTERDAY, TOMORROW, LAST_N_DAYS:n, NEXT_N_DAYS:n (emulator clock).
As in Salesforce, text comparisons and LIKE are case-insensitive and field names are
case-insensitive. A query outside the subset is answered MALFORMED_QUERY, never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from healthsync.connectors.sandbox.clock import parse_datetime, sf_datetime


class SoqlError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


_TOKEN = re.compile(
    r"""\s*(?:
    (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2})
  | (?P<number>-?\d+(?:\.\d+)?)
  | (?P<op><=|>=|!=|<>|=|<|>)
  | (?P<punct>[(),])
  | (?P<word>[A-Za-z_][A-Za-z0-9_.]*(?::\d+)?)
    )""",
    re.VERBOSE,
)

NUMERIC = {"double", "currency", "percent", "int", "long"}
TEXTUAL = {"string", "textarea", "picklist", "email", "phone", "url", "combobox", "multipicklist"}


@dataclass
class Tok:
    kind: str
    value: str


def tokenize(text: str) -> list[Tok]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise SoqlError("MALFORMED_QUERY", f"unexpected token at: {text[pos:pos + 30]!r}")
        kind = m.lastgroup
        out.append(Tok(kind, m.group(kind)))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


@dataclass
class Cmp:
    field: str
    op: str
    value: Any  # a literal, a list of literals (IN), or a _Range


@dataclass
class BoolOp:
    op: str  # AND | OR | NOT
    items: list


@dataclass
class _Literal:
    kind: str  # string | number | bool | null | date | datetime | range
    value: Any


@dataclass
class Query:
    fields: list[str]
    obj: str
    where: Any = None
    order: list[tuple[str, bool, bool]] = field(default_factory=list)  # (field, descending, nulls_last)
    limit: int | None = None
    offset: int = 0
    count_only: bool = False


class _Parser:
    def __init__(self, toks: list[Tok], now: datetime):
        self.toks, self.i, self.now = toks, 0, now

    def peek(self, k: int = 0) -> Tok | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def kw(self, *words: str) -> bool:
        t = self.peek()
        return t is not None and t.kind == "word" and t.value.upper() in words

    def expect_kw(self, word: str) -> None:
        if not self.kw(word):
            t = self.peek()
            raise SoqlError("MALFORMED_QUERY", f"expected {word} but found {t.value if t else 'end of query'!r}")
        self.i += 1

    def take(self) -> Tok:
        t = self.peek()
        if t is None:
            raise SoqlError("MALFORMED_QUERY", "unexpected end of query")
        self.i += 1
        return t

    def punct(self, p: str) -> bool:
        t = self.peek()
        if t is not None and t.kind == "punct" and t.value == p:
            self.i += 1
            return True
        return False

    def parse(self) -> Query:
        self.expect_kw("SELECT")
        fields, count_only = [], False
        if self.kw("COUNT") and self.peek(1) and self.peek(1).value == "(":
            self.i += 1
            self.punct("(")
            if not self.punct(")"):
                raise SoqlError("MALFORMED_QUERY", "only COUNT() without a field is supported")
            count_only = True
        else:
            while True:
                t = self.take()
                if t.kind != "word" or t.value.upper() == "FROM":
                    raise SoqlError("MALFORMED_QUERY", f"expected a field name, found {t.value!r}")
                fields.append(t.value)
                if not self.punct(","):
                    break
        self.expect_kw("FROM")
        obj = self.take()
        if obj.kind != "word":
            raise SoqlError("MALFORMED_QUERY", f"expected an object name, found {obj.value!r}")
        q = Query(fields=fields, obj=obj.value, count_only=count_only)
        if self.kw("WHERE"):
            self.i += 1
            q.where = self.parse_or()
        if self.kw("ORDER"):
            self.i += 1
            self.expect_kw("BY")
            while True:
                f = self.take().value
                desc, nulls_last = False, None
                if self.kw("ASC", "DESC"):
                    desc = self.take().value.upper() == "DESC"
                if self.kw("NULLS"):
                    self.i += 1
                    nulls_last = self.take().value.upper() == "LAST"
                if nulls_last is None:
                    nulls_last = desc  # SOQL default: nulls first ascending, last descending
                q.order.append((f, desc, nulls_last))
                if not self.punct(","):
                    break
        if self.kw("LIMIT"):
            self.i += 1
            q.limit = self._int()
        if self.kw("OFFSET"):
            self.i += 1
            q.offset = self._int()
        if self.peek() is not None:
            raise SoqlError("MALFORMED_QUERY", f"unexpected {self.peek().value!r} (not in the supported SOQL subset)")
        return q

    def _int(self) -> int:
        t = self.take()
        if t.kind != "number" or "." in t.value or t.value.startswith("-"):
            raise SoqlError("MALFORMED_QUERY", f"expected a whole number, found {t.value!r}")
        return int(t.value)

    def parse_or(self):
        items = [self.parse_and()]
        while self.kw("OR"):
            self.i += 1
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else BoolOp("OR", items)

    def parse_and(self):
        items = [self.parse_not()]
        while self.kw("AND"):
            self.i += 1
            items.append(self.parse_not())
        return items[0] if len(items) == 1 else BoolOp("AND", items)

    def parse_not(self):
        if self.kw("NOT"):
            self.i += 1
            return BoolOp("NOT", [self.parse_not()])
        if self.punct("("):
            node = self.parse_or()
            if not self.punct(")"):
                raise SoqlError("MALFORMED_QUERY", "missing closing parenthesis")
            return node
        f = self.take()
        if f.kind != "word":
            raise SoqlError("MALFORMED_QUERY", f"expected a field name, found {f.value!r}")
        if self.kw("NOT") and self.peek(1) and self.peek(1).value.upper() == "IN":
            self.i += 2
            return Cmp(f.value, "NOT IN", self._list())
        if self.kw("IN"):
            self.i += 1
            return Cmp(f.value, "IN", self._list())
        if self.kw("LIKE"):
            self.i += 1
            lit = self.literal()
            if lit.kind != "string":
                raise SoqlError("MALFORMED_QUERY", "LIKE needs a 'quoted' pattern")
            return Cmp(f.value, "LIKE", lit)
        op = self.take()
        if op.kind != "op":
            raise SoqlError("MALFORMED_QUERY", f"expected an operator after {f.value}, found {op.value!r}")
        return Cmp(f.value, "!=" if op.value == "<>" else op.value, self.literal())

    def _list(self) -> list[_Literal]:
        if not self.punct("("):
            raise SoqlError("MALFORMED_QUERY", "IN needs a parenthesised list")
        items = [self.literal()]
        while self.punct(","):
            items.append(self.literal())
        if not self.punct(")"):
            raise SoqlError("MALFORMED_QUERY", "missing ) after IN list")
        return items

    def literal(self) -> _Literal:
        t = self.take()
        if t.kind == "string":
            return _Literal("string", re.sub(r"\\(.)", r"\1", t.value[1:-1]))
        if t.kind == "number":
            return _Literal("number", float(t.value))
        if t.kind == "datetime":
            return _Literal("datetime", sf_datetime(parse_datetime(t.value)))
        if t.kind == "date":
            return _Literal("date", t.value)
        if t.kind == "word":
            w = t.value.upper()
            if w in ("TRUE", "FALSE"):
                return _Literal("bool", w == "TRUE")
            if w == "NULL":
                return _Literal("null", None)
            rng = self._date_literal(w)
            if rng is not None:
                return rng
        raise SoqlError("MALFORMED_QUERY", f"unexpected literal {t.value!r}")

    def _date_literal(self, w: str) -> _Literal | None:
        today = self.now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
        day = timedelta(days=1)
        if w == "TODAY":
            start, end = today, today + day
        elif w == "YESTERDAY":
            start, end = today - day, today
        elif w == "TOMORROW":
            start, end = today + day, today + 2 * day
        elif m := re.fullmatch(r"LAST_N_DAYS:(\d+)", w):
            start, end = today - int(m.group(1)) * day, today + day
        elif m := re.fullmatch(r"NEXT_N_DAYS:(\d+)", w):
            start, end = today + day, today + (int(m.group(1)) + 1) * day
        else:
            return None
        return _Literal("range", (start, end))


def parse(text: str, now: datetime) -> Query:
    return _Parser(tokenize(text), now).parse()


# --- compilation ---------------------------------------------------------------------------

Getter = Callable[[dict], Any]
Resolver = Callable[[str], tuple[Getter, str]]  # field name -> (getter, salesforce type)


def _coerce(lit: _Literal, ftype: str, fname: str):
    """Literal -> the comparable form of a field of type `ftype` (None for null)."""
    if lit.kind == "null":
        return None
    if ftype in NUMERIC:
        if lit.kind != "number":
            raise SoqlError("INVALID_FIELD", f"value of filter criterion for field '{fname}' must be of type double and should not be enclosed in quotes")
        return lit.value
    if ftype == "boolean":
        if lit.kind != "bool":
            raise SoqlError("INVALID_FIELD", f"value of filter criterion for field '{fname}' must be of type boolean and should not be enclosed in quotes")
        return lit.value
    if ftype == "datetime":
        if lit.kind == "datetime":
            return lit.value
        if lit.kind == "range":
            return (sf_datetime(lit.value[0]), sf_datetime(lit.value[1]))
        raise SoqlError("INVALID_FIELD", f"value of filter criterion for field '{fname}' must be of type dateTime and should not be enclosed in quotes")
    if ftype == "date":
        if lit.kind == "date":
            return lit.value
        if lit.kind == "range":
            return (lit.value[0].strftime("%Y-%m-%d"), lit.value[1].strftime("%Y-%m-%d"))
        raise SoqlError("INVALID_FIELD", f"value of filter criterion for field '{fname}' must be of type date and should not be enclosed in quotes")
    if lit.kind != "string":
        raise SoqlError("INVALID_FIELD", f"value of filter criterion for field '{fname}' must be of type {ftype} and should be enclosed in quotes")
    if ftype in ("id", "reference"):
        return lit.value
    return lit.value.lower()


def _cmp_fn(op: str, target, ftype: str, get: Getter) -> Callable[[dict], bool]:
    textual = ftype in TEXTUAL
    idlike = ftype in ("id", "reference")

    def val(rec):
        v = get(rec)
        if v is None:
            return None
        if textual:
            return str(v).lower()
        if idlike and isinstance(target, str) and len(target) == 15:
            return v[:15]
        return v

    if isinstance(target, tuple):  # a date range literal
        start, end = target
        return {
            "=": lambda r: (v := val(r)) is not None and start <= v < end,
            "!=": lambda r: (v := val(r)) is None or not (start <= v < end),
            ">": lambda r: (v := val(r)) is not None and v >= end,
            ">=": lambda r: (v := val(r)) is not None and v >= start,
            "<": lambda r: (v := val(r)) is not None and v < start,
            "<=": lambda r: (v := val(r)) is not None and v < end,
        }[op]
    if target is None:
        if op == "=":
            return lambda r: get(r) is None
        if op == "!=":
            return lambda r: get(r) is not None
        return lambda r: False
    return {
        "=": lambda r: val(r) == target,
        "!=": lambda r: val(r) != target,
        ">": lambda r: (v := val(r)) is not None and v > target,
        ">=": lambda r: (v := val(r)) is not None and v >= target,
        "<": lambda r: (v := val(r)) is not None and v < target,
        "<=": lambda r: (v := val(r)) is not None and v <= target,
    }[op]


def compile_where(node, resolve: Resolver) -> Callable[[dict], bool]:
    if node is None:
        return lambda r: True
    if isinstance(node, BoolOp):
        parts = [compile_where(n, resolve) for n in node.items]
        if node.op == "AND":
            return lambda r: all(p(r) for p in parts)
        if node.op == "OR":
            return lambda r: any(p(r) for p in parts)
        inner = parts[0]
        return lambda r: not inner(r)
    get, ftype = resolve(node.field)
    if node.op in ("IN", "NOT IN"):
        values = {_coerce(lit, ftype, node.field) for lit in node.value}
        textual = ftype in TEXTUAL

        def member(r):
            v = get(r)
            if v is not None and textual:
                v = str(v).lower()
            return v in values

        return member if node.op == "IN" else (lambda r: not member(r))
    if node.op == "LIKE":
        pattern = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in node.value.value)
        rx = re.compile(pattern, re.IGNORECASE | re.DOTALL)
        return lambda r: (v := get(r)) is not None and rx.fullmatch(str(v)) is not None
    return _cmp_fn(node.op, _coerce(node.value, ftype, node.field), ftype, get)


def sort_records(records: list[dict], order: list[tuple[str, bool, bool]], resolve: Resolver) -> list[dict]:
    """Stable multi-key sort with SOQL null placement."""
    out = list(records)
    for fname, desc, nulls_last in reversed(order):
        get, ftype = resolve(fname)
        textual = ftype in TEXTUAL
        present = [r for r in out if get(r) is not None]
        missing = [r for r in out if get(r) is None]
        present.sort(key=(lambda r: str(get(r)).lower()) if textual else get, reverse=desc)
        out = present + missing if nulls_last else missing + present
    return out
