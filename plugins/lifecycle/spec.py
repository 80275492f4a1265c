"""Segment files: parse and validate the YAML header and the SELECT under it.

A segment file is `include/sql/segments/<journey>.sql`:

    /* ---
    journey: cart_abandonment
    schedule: hourly
    entry_key: cart_id
    entered_at: cart_updated_at
    steps:
      - {name: reminder_1, after: 1h, channel: email, template: cart_abandonment/reminder_1}
    exit:
      - {when: purchased_since_entry, then: {channel: email, template: cart_abandonment/thank_you}}
    --- */
    SELECT ...

Every problem is reported as a SpecError naming the file and the key (or line) at fault,
so an analyst can fix it without reading Python. The full key list is in the README.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from lifecycle.channels import CHANNELS
from lifecycle.config import CONDITIONS_DIR, SEGMENTS_DIR, TEMPLATES_DIR
from lifecycle.determinism import check_sql as check_ties
from lifecycle.model import Kind

HEADER = re.compile(r"\A\s*/\*\s*---\s*\n(?P<yaml>.*?)\n\s*---\s*\*/(?P<sql>.*)\Z", re.S)
NAME = re.compile(r"^[a-z][a-z0-9_]*$")
DURATION = re.compile(r"^\s*(?P<n>\d+)\s*(?P<unit>m|h|d|w)\s*$")
UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 604800}
# A bound parameter `:name`, but not a `::cast`.
BIND = re.compile(r"(?<![:\w\\]):([A-Za-z_]\w*)")

SCHEDULES = {"hourly": "0 * * * *", "daily": "0 0 * * *", "weekly": "0 0 * * 1"}
DEFAULT_LATENESS = {"hourly": timedelta(hours=6), "daily": timedelta(days=2), "weekly": timedelta(days=3)}
URGENCIES = {"very-low", "low", "normal", "high"}
ACTIONS = {"suppress"}
EXIT_STATUSES = {"converted", "exited"}
# A draft journey runs every interval as a dry run; `lifecycle promote` (or the header) makes it live.
STATUSES = ("draft", "live")
DEFAULT_START = "2026-01-01"
RUN_PARAMS = {"interval_start", "interval_end", "as_of", "journey", "mode", "shop_url", "part", "parts"}
# `parts:` splits a segment's customers over this many warehouse connections at once (stage.py);
# the task's pool (warehouse.py) holds 4.
MAX_PARTS = 4

TOP_KEYS = {
    "journey", "description", "schedule", "start_date", "kind", "entry_key", "customer_id",
    "entered_at", "params", "steps", "exit", "holdout_percent", "batch_size", "max_lateness", "unique_columns",
    "complete_after", "volume_guard", "owner", "tags", "audience", "refresh_clock", "offers",
    "one_active_per_customer", "status", "send_window", "parts",
}
STEP_KEYS = {"name", "after", "channel", "template", "max_lateness", "when", "unless", "coupon", "action", "ttl", "urgency",
             "tracking", "variants", "ab_test"}
STEP_EXAMPLE = "{name: ..., after: 1h, channel: email, template: ...}"  # shown when a step is not a mapping
EXIT_KEYS = {"when", "params", "reason", "status", "then"}
THEN_KEYS = {"name", "channel", "template", "coupon", "tracking"}
COUPON_KEYS = {"percent_off", "valid_days", "prefix", "product"}
GUARD_KEYS = {"factor", "min_rows", "history"}


FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # CSafeLoader: PyYAML built with libyaml
# How templates are written (lifecycle.render's environment lexes them so): what a subject line in a
# segment file is checked against.
TEMPLATE_SYNTAX = {"trim_blocks": True, "lstrip_blocks": True, "keep_trailing_newline": False}
RESERVED_JOURNEYS = {"lifecycle_dispatch"}  # DAG ids the engine itself uses
TAG_MAX_LEN = 100  # Airflow refuses longer DAG tags


class SpecError(ValueError):
    """A segment file that cannot become a journey; the message names file and problem.

    `schedule`, `owner` and `start_date` are what could still be read from the header (None
    when unreadable): the broken file's stand-in DAG keeps them, so each of its intervals fails
    visibly (and alerts its owner) instead of the journey silently stopping."""

    def __init__(self, path: Path | str, problems: list[str]):
        self.path = Path(path)
        self.problems = problems
        self.schedule: str | None = None
        self.owner: str | None = None
        self.start_date: datetime | None = None
        super().__init__(f"{self.path.name}: " + "; ".join(problems))

    def remember_header(self, header: Any) -> SpecError:
        """Keep the header values a stand-in DAG can use, where they are valid."""
        if isinstance(header, dict):
            schedule, owner = header.get("schedule"), header.get("owner")
            self.schedule = schedule if isinstance(schedule, str) and schedule in SCHEDULES else None
            self.owner = owner.strip() if isinstance(owner, str) and owner.strip() else None
            self.start_date = _start_date(header.get("start_date", DEFAULT_START), _Checker(Path(), Path()))
        return self


VARIANT_KEYS = {"name", "weight", "template", "subject"}
VARIANT_EXAMPLE = "{name: b, weight: 50, subject: ...}"
AB_KEYS = {"metric", "baseline_rate", "mde", "winner"}
METRICS = ("converted", "clicked")
WINNERS = ("manual", "auto")
MAX_VARIANTS = 5


@dataclass(frozen=True)
class Variant:
    name: str
    weight: float = 1.0
    template: str | None = None  # None: the step's template
    subject: str | None = None  # a one-line Jinja subject replacing <template>.subject.txt (email)


@dataclass(frozen=True)
class ABTest:
    metric: str = "converted"  # what the rule compares: conversions (any) or human clicks per send
    baseline_rate: float = 0.05  # the control's expected rate, fixed before the test (sample size)
    mde: float = 0.02  # minimum detectable effect: an absolute difference in the rate
    winner: str = "manual"  # auto: new sends switch to the winner once the rule is met


@dataclass(frozen=True)
class Coupon:
    percent_off: float
    valid_days: int
    prefix: str
    product: str | None = None  # column of the SELECT with the product id: a code good only for that product


@dataclass(frozen=True)
class Step:
    name: str
    after: timedelta
    channels: tuple[str, ...]  # in order of preference: the first the customer can receive is used
    template: str | None
    max_lateness: timedelta
    when: str | None = None
    unless: str | None = None
    coupon: Coupon | None = None
    action: str | None = None
    ttl: timedelta = timedelta(days=1)  # push: how long the push service keeps an undelivered message
    urgency: str = "normal"  # push: RFC 8030 urgency
    tracking: bool = True  # false: its links and pixel are not tracked (lifecycle.tracking)
    variants: tuple[Variant, ...] = ()  # an A/B test of this step (README "A/B tests"; lifecycle.variants)
    ab_test: ABTest | None = None  # its decision rule (set when variants are)

    @property
    def channel(self) -> str:
        return self.channels[0]


@dataclass(frozen=True)
class Exit:
    when: str  # the condition file
    status: str
    message_step: str | None  # the exit message's step name, e.g. "thank_you"
    channel: str | None
    template: str | None
    coupon: Coupon | None = None  # a code issued with the exit message (e.g. a referral reward)
    # values for the condition's declared params (`params:` in its header), bound for this rule only
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    reason: str = ""  # recorded as exit_reason and conversions.condition: `reason:`, else the condition's name
    tracking: bool = True  # `then: {tracking: false}`: the exit message's links are not tracked

    def __post_init__(self) -> None:
        if not self.reason:  # the condition's name, however the rule was built
            object.__setattr__(self, "reason", self.when or "")


@dataclass(frozen=True)
class VolumeGuard:
    factor: float = 5.0
    min_rows: int = 1000
    history: int = 14


@dataclass(frozen=True)
class JourneySpec:
    journey: str
    path: Path
    description: str
    schedule: str
    cron: str
    start_date: datetime
    kind: str
    entry_key: str
    customer_id: str
    entered_at: str
    sql: str
    params: dict[str, Any]
    steps: tuple[Step, ...]
    exits: tuple[Exit, ...]
    holdout_percent: float
    batch_size: int
    max_lateness: timedelta
    complete_after: timedelta
    volume_guard: VolumeGuard
    owner: str
    tags: tuple[str, ...] = field(default=())
    audience_id: str | None = None  # Meta custom audience kept in step with active members
    refresh_clock: bool = False  # a later entered_at from a later run moves an active enrollment's clock
    offers: tuple = ()  # lifecycle.offers.Offer: holiday-dated offers, bound to the SQL as :offers
    # A customer is in the journey at most once at a time: a row that would open a second active
    # enrollment is quarantined. False for journeys whose entries are per cart, order or session.
    one_active_per_customer: bool = True
    status: str = "draft"  # 'draft': every run is a dry run (records, delivers nothing); 'live': sends
    # Messages claimed per statement while sending (None: LIFECYCLE_SEND_WINDOW, default 50): also
    # the most whose outcome a worker killed mid-send can leave unknown.
    send_window: int | None = None
    # The segment runs as this many queries at once, each on its own connection, each selecting
    # the customers of part :part (0-based) of :parts; 1: one query (:part 0 of 1, everyone).
    parts: int = 1

    @property
    def channels(self) -> set[str]:
        return {c for s in self.steps for c in s.channels} | {e.channel for e in self.exits if e.channel}

    @property
    def conditions(self) -> set[str]:
        names = {e.when for e in self.exits}
        for s in self.steps:
            names |= {c for c in (s.when, s.unless) if c}
        return names

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)


def parse_duration(text: Any) -> timedelta:
    match = DURATION.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a duration (use e.g. 10m, 1h, 2d, 1w)")
    return timedelta(seconds=int(match["n"]) * UNIT_SECONDS[match["unit"]])


def read_file_params(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The `params:` of a file's `/* --- ... --- */` header (a segment's, or a condition's optional
    one) and what is wrong with it; no header: no params."""
    try:
        match = HEADER.match(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return {}, []
    if not match:
        return {}, []
    try:
        header = yaml.safe_load(match["yaml"]) or {}
    except yaml.YAMLError as exc:
        return {}, [f"header: invalid YAML: {getattr(exc, 'problem', exc)}"]
    params = header.get("params") if isinstance(header, dict) else None
    if params is None:
        return {}, []
    if not isinstance(params, dict) or not all(isinstance(n, str) and NAME.match(n) for n in params):
        return {}, ["params: must be a mapping of lower_snake_case names to default values"]
    return params, []


def file_params(path: Path) -> dict[str, Any]:
    """A file's declared params with their defaults ({} when it has none or they are unreadable)."""
    return read_file_params(path)[0]


def bind_names(sql: str) -> set[str]:
    return set(BIND.findall(_strip_sql_comments_and_strings(sql)))


def _strip_sql_comments_and_strings(sql: str) -> str:
    sql = re.sub(r"/\*.*?\*/", " ", sql, flags=re.S)
    sql = re.sub(r"--[^\n]*", " ", sql)
    return re.sub(r"'(?:[^']|'')*'", "''", sql)


def _unknown_keys(where: str, given: dict, allowed: set[str]) -> list[str]:
    problems = []
    for key in sorted(set(given) - allowed):
        hint = difflib.get_close_matches(str(key), sorted(allowed), n=1)
        problems.append(f"{where}unknown key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    return problems


def _named_entry(where: str, raw: Any, keys: set[str], c: Any, *, example: str, fallback: str,
                 name_examples: str = "") -> str | None:
    """The checks every named entry of a header list shares (a step, a variant): a mapping, only
    known keys, a lower_snake_case `name`. Returns the name (`fallback` when it is missing or bad,
    so that the entry's other problems are still reported under it), or None when `raw` is not a
    mapping (nothing more to check). Every problem goes to the checker `c`."""
    if not isinstance(raw, dict):
        c.add(f"{where}: must be a mapping like {example}")
        return None
    c.problems += _unknown_keys(f"{where}: ", raw, keys)
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        c.add(f"{where}.name: required, lower_snake_case{name_examples}, got {name!r}")
        return fallback
    return name


class _Checker:
    """Collects every problem in one pass so the analyst sees them all at once."""

    def __init__(self, templates_dir: Path, conditions_dir: Path):
        self.problems: list[str] = []
        self.templates_dir = templates_dir
        self.conditions_dir = conditions_dir
        self.tie_checked: set[str] = set()  # condition files already checked for ties (README "Ties")
        self.journey_params: set[str] = set()  # a condition may read the journey's params too

    def add(self, problem: str) -> None:
        self.problems.append(problem)

    def text(self, where: str, value: Any, default: str) -> str:
        """A plain-words value (owner, description); numbers are taken as written."""
        if value is None:
            return default
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        self.add(f"{where}: must be plain text, got {type(value).__name__} {value!r}")
        return default

    def words(self, where: str, value: Any) -> tuple[str, ...]:
        """`tags: [retention, email]` (one word alone is one tag)."""
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(t, str) and t.strip() for t in items):
            self.add(f"{where}: must be a list of words like [retention, email], got {value!r}")
            return ()
        long = [t for t in items if len(t) > TAG_MAX_LEN]
        if long:
            self.add(f"{where}: a tag may have at most {TAG_MAX_LEN} characters, {long[0][:20]!r}... has {len(long[0])}")
            return ()
        return tuple(t.strip() for t in items)

    def duration(self, where: str, value: Any, default: timedelta | None = None) -> timedelta:
        if value is None and default is not None:
            return default
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.add(f"{where}: {exc}")
            return default or timedelta(0)

    def column(self, where: str, value: Any) -> str:
        if not isinstance(value, str) or not NAME.match(value):
            self.add(f"{where}: must name a column of the SELECT (lower_snake_case), got {value!r}")
            return ""
        return value

    def condition(self, where: str, name: Any) -> str | None:
        if name is None:
            return None
        if not isinstance(name, str) or not NAME.match(name):
            self.add(f"{where}: condition must be a name like purchased_since_entry, got {name!r}")
            return None
        if not (self.conditions_dir / f"{name}.sql").is_file():
            known = sorted(p.stem for p in self.conditions_dir.glob("*.sql"))
            hint = difflib.get_close_matches(name, known, n=1)
            self.add(
                f"{where}: condition {name!r} has no file include/sql/conditions/{name}.sql"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
            )
        elif name not in self.tie_checked:
            self.tie_checked.add(name)
            path = self.conditions_dir / f"{name}.sql"
            self.problems += [f"{where}: {p}" for p in condition_tie_problems(path) + self.condition_params(path)]
        return name

    def condition_params(self, path: Path) -> list[str]:
        """A condition file's `params:` header and its bound names: each must be the engine's, the
        condition's own or the journey's (and never both of the latter: which would it read?)."""
        declared, problems = read_file_params(path)
        text = path.read_text(encoding="utf-8")
        problems += [f"params.{n}: also a parameter of the journey; rename one" for n in sorted(set(declared) & self.journey_params)]
        problems += [f"parameter :{n} is not bound (declare it under params: in the condition's header, "
                     "or in the journey's)" for n in sorted(bind_names(text) - RUN_PARAMS - set(declared) - self.journey_params)]
        return [f"condition {path.name} {p}" for p in problems]

    def channels_and_template(self, where: str, channel: Any, template: Any) -> tuple[tuple[str, ...], str | None]:
        """`channel: email` or `channel: [push, email]` (fallback order), each with its template files."""
        channels = tuple(channel) if isinstance(channel, list) else (channel,)
        unknown = [c for c in channels if not isinstance(c, str) or c not in CHANNELS]
        if unknown or not channels or len(set(channels)) != len(channels):
            self.add(f"{where}.channel: {channel!r} is not a channel or a list of distinct channels "
                     f"(available: {', '.join(sorted(CHANNELS))})")
            return tuple(str(c) for c in channels) or ("email",), None
        if not isinstance(template, str) or not template:
            self.add(f"{where}.template: required for channel {channel!r}")
            return channels, None

        try:
            CHANNELS[channels[0]].files(template, self.templates_dir)
        except ValueError:
            self.add(f"{where}.template: {template!r} is not a template name like <journey>/<step> "
                     "under include/templates/ (no '..', no absolute path)")
            return channels, None
        for name in channels:
            missing = CHANNELS[name].missing_files(template, self.templates_dir)
            if missing:
                names = ", ".join(str(p.relative_to(self.templates_dir.parent.parent)) for p in missing)
                self.add(f"{where}.template: {template!r} is missing {names} (for {name})")
        return channels, template


def load_spec(
    path: Path | str,
    templates_dir: Path = TEMPLATES_DIR,
    conditions_dir: Path = CONDITIONS_DIR,
) -> JourneySpec:
    """Parse and validate one segment file; raise SpecError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(path, [f"cannot read the file: {exc}"]) from exc
    match = HEADER.match(text)
    if not match:
        raise SpecError(path, ["the file must start with a header comment `/* --- ... --- */` (see README)"])
    header_line = 2  # YAML starts on the file's second line
    try:
        header = _read_header(match["yaml"])
    except yaml.YAMLError as exc:
        mark, opened = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
        where = f"header line {mark.line + header_line}" if mark else "header"
        # The parser notices an unclosed bracket or quote where the header ends; say where it opened.
        started = (f" ({exc.context} on header line {opened.line + header_line}, column {opened.column + 1})"
                   if opened and getattr(exc, "context", None) else "")
        raise SpecError(path, [f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}{started}"]) from exc
    if not isinstance(header, dict):
        raise SpecError(path, ["the header must be a YAML mapping of keys (journey:, schedule:, steps:, ...)"])
    sql_line = text.count("\n", 0, match.start("sql"))  # lines before the SQL body
    try:
        return _build_spec(path, header, match["sql"], _Checker(templates_dir, conditions_dir), sql_line)
    except SpecError as exc:
        raise exc.remember_header(header) from exc.__cause__
    except Exception as exc:  # a value of a type no check foresaw: still this file's error, never an import error
        raise SpecError(path, [f"could not be read as a journey: {type(exc).__name__}: {exc} "
                               "(check the types of the header values against the README)"]
                        ).remember_header(header) from exc


def _read_header(text: str) -> Any:
    """The header's YAML, read by libyaml's C parser where PyYAML has it (several times faster:
    this runs for every segment file at every DAG parse). On an error the pure-Python parser
    reads it again: it decides, and its messages and marks are the ones analysts are shown."""
    if FAST_LOADER is not yaml.SafeLoader:
        try:
            return yaml.load(text, Loader=FAST_LOADER) or {}
        except yaml.YAMLError:
            pass
    return yaml.safe_load(text) or {}


def _build_spec(path: Path, h: dict, sql: str, c: _Checker, sql_line: int = 0) -> JourneySpec:
    c.problems += _unknown_keys("", h, TOP_KEYS)
    journey = h.get("journey")
    if journey != path.stem:
        c.add(f"journey: must equal the file name {path.stem!r}, got {journey!r}")
    if not NAME.match(path.stem):
        c.add("the file name must be lower_snake_case, e.g. cart_abandonment.sql")
    if path.stem in RESERVED_JOURNEYS:
        c.add(f"journey: {path.stem!r} is reserved for the engine's own DAG; choose another name")
    for key in ("schedule", "entry_key", "entered_at", "steps"):
        if key not in h:
            c.add(f"{key}: required")
    schedule = h.get("schedule", "daily")
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        c.add(f"schedule: {schedule!r} is not one of {', '.join(SCHEDULES)}")
        schedule = "daily"
    kind = h.get("kind", Kind.MARKETING.value)  # kept a plain str: it goes into DAG tags
    if not isinstance(kind, str) or kind not in set(Kind):
        c.add(f"kind: must be marketing or transactional, got {kind!r}")
        kind = Kind.MARKETING.value
    description = c.text("description", h.get("description"), "")
    owner = c.text("owner", h.get("owner"), "analytics")
    tags = c.words("tags", h.get("tags"))
    start_date = _start_date(h.get("start_date", DEFAULT_START), c)
    max_lateness = c.duration("max_lateness", h.get("max_lateness"), DEFAULT_LATENESS[schedule])
    params = h.get("params") or {}
    if not isinstance(params, dict):
        c.add("params: must be a mapping of name: value")
        params = {}
    for name in [n for n in params if not isinstance(n, str) or not NAME.match(n)]:
        c.add(f"params: {name!r} is not a parameter name (lower_snake_case, used in the SQL as :name)")
        params = {n: v for n, v in params.items() if isinstance(n, str)}
    for name in set(params) & RUN_PARAMS:
        c.add(f"params.{name}: reserved, the engine binds it")
    c.journey_params = set(params) | ({"offers"} if "offers" in h else set())
    steps = _steps(h.get("steps"), c, max_lateness)
    exits = _exits(h.get("exit") or [], c)
    names = [s.name for s in steps] + [e.message_step for e in exits if e.message_step]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        c.add(f"steps: name {dup!r} is used twice (step and exit message names must be unique)")
    sql_body = _check_sql(sql, set(params) | ({"offers"} if "offers" in h else set()), c)
    _check_ties(sql, h.get("unique_columns"), sql_line, c)
    holdout = h.get("holdout_percent", 0)
    if not isinstance(holdout, (int, float)) or not 0 <= holdout < 100:
        c.add(f"holdout_percent: must be a number from 0 to 99, got {holdout!r}")
        holdout = 0
    if kind == Kind.TRANSACTIONAL and holdout:
        # An order confirmation must reach every customer: no one is held out to measure lift.
        c.add(f"holdout_percent: a transactional journey never holds anyone out (got {holdout!r}); remove the key")
        holdout = 0
    batch_size = h.get("batch_size", 500)
    if not isinstance(batch_size, int) or not 1 <= batch_size <= 10_000:
        c.add(f"batch_size: must be a whole number from 1 to 10000, got {batch_size!r}")
        batch_size = 500
    send_window = h.get("send_window")
    if send_window is not None and (isinstance(send_window, bool) or not isinstance(send_window, int)
                                    or not 1 <= send_window <= 1000):
        c.add(f"send_window: must be a whole number from 1 to 1000, got {send_window!r}")
        send_window = None
    parts = _parts(h.get("parts", 1), bind_names(sql_body), c)
    guard = _volume_guard(h.get("volume_guard") or {}, c)
    columns = {key: c.column(key, h.get(key, default)) for key, default in
               (("entry_key", None), ("customer_id", "customer_id"), ("entered_at", None)) if key in h or default}
    complete_after = c.duration("complete_after", h.get("complete_after"), timedelta(days=7))
    audience_id = _audience(h.get("audience"), c)
    refresh_clock = h.get("refresh_clock", False)
    if not isinstance(refresh_clock, bool):
        c.add(f"refresh_clock: must be true or false, got {refresh_clock!r}")
    one_active = h.get("one_active_per_customer", True)
    if not isinstance(one_active, bool):
        c.add(f"one_active_per_customer: must be true or false, got {one_active!r}")
    status = _status(h.get("status", "draft"), c)
    offers = ()
    if "offers" in h:  # seasonal offers, dated by the holidays package (imported only here)
        from lifecycle.offers import parse_offers

        offers, problems = parse_offers(h["offers"], sql_uses_offers="offers" in bind_names(sql_body),
                                        last_step_after=steps[-1].after if steps else None,
                                        complete_after=complete_after)
        c.problems += problems
    if c.problems:
        raise SpecError(path, c.problems)
    return JourneySpec(
        journey=journey,
        path=path,
        description=description.strip(),
        schedule=schedule,
        cron=SCHEDULES[schedule],
        start_date=start_date,
        kind=kind,
        entry_key=columns["entry_key"],
        customer_id=columns["customer_id"],
        entered_at=columns["entered_at"],
        sql=sql_body,
        params=params,
        steps=tuple(steps),
        exits=tuple(exits),
        holdout_percent=float(holdout),
        batch_size=batch_size,
        send_window=send_window,
        parts=parts,
        max_lateness=max_lateness,
        complete_after=complete_after,
        volume_guard=guard,
        owner=owner,
        tags=tags,
        audience_id=audience_id,
        refresh_clock=refresh_clock,
        offers=offers,
        one_active_per_customer=one_active,
        status=status,
    )


def _status(value: Any, c: _Checker) -> str:
    if value not in STATUSES:
        c.add(f"status: must be draft (runs as a dry run, delivers nothing) or live, got {value!r}")
        return "draft"
    return value


def _start_date(value: Any, c: _Checker) -> datetime:
    try:
        d = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    except ValueError:
        c.add(f"start_date: {value!r} is not a date like 2026-01-01")
        d = datetime(2026, 1, 1)
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def _steps(raw: Any, c: _Checker, default_lateness: timedelta) -> list[Step]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not raw:
        c.add("steps: must be a non-empty list of steps")
        return []
    steps, previous = [], timedelta(0)
    for i, s in enumerate(raw):
        name = _named_entry(f"steps[{i}]", s, STEP_KEYS, c, example=STEP_EXAMPLE, fallback=f"step_{i}")
        if name is None:
            continue
        where = f"steps[{i}] ({name})"
        known = len(c.problems)
        after = c.duration(f"{where}.after", s.get("after", "0h"))
        if len(c.problems) == known and after < previous:  # order is only meaningful for valid durations
            c.add(f"{where}.after: steps must be in time order ({s.get('after')} comes before the previous step)")
        previous = max(previous, after)
        action = s.get("action")
        if action is not None and (not isinstance(action, str) or action not in ACTIONS):
            c.add(f"{where}.action: {action!r} is not an action (available: {', '.join(sorted(ACTIONS))})")
            action = None
        if action:
            channels, template = (s.get("channel", "email"),), None
            if not isinstance(channels[0], str) or channels[0] not in CHANNELS:
                c.add(f"{where}.channel: {channels[0]!r} is not a channel")
                channels = ("email",)
        else:
            channels, template = c.channels_and_template(where, s.get("channel"), s.get("template"))
        urgency = s.get("urgency", "normal")
        if not isinstance(urgency, str) or urgency not in URGENCIES:
            c.add(f"{where}.urgency: one of {', '.join(sorted(URGENCIES))}, got {urgency!r}")
            urgency = "normal"
        variants, ab_test = (), None
        if "variants" in s or "ab_test" in s:  # an A/B test (README "A/B tests")
            variants, ab_test = _variants(where, s.get("variants"), s.get("ab_test"), channels, action, c)
        steps.append(
            Step(
                name=name,
                after=after,
                channels=channels,
                template=template,
                ttl=c.duration(f"{where}.ttl", s.get("ttl"), timedelta(days=1)),
                urgency=urgency,
                tracking=_tracking(where, s, c),
                max_lateness=c.duration(f"{where}.max_lateness", s.get("max_lateness"), default_lateness),
                when=c.condition(f"{where}.when", s.get("when")),
                unless=c.condition(f"{where}.unless", s.get("unless")),
                coupon=_coupon(where, s.get("coupon"), c),
                action=action,
                variants=variants,
                ab_test=ab_test,
            )
        )
    return steps


def _tracking(where: str, raw: dict, c: _Checker) -> bool:
    """`tracking: false` turns off tracked links and the open pixel for the template."""
    value = raw.get("tracking", True)
    if not isinstance(value, bool):
        c.add(f"{where}.tracking: true or false, got {value!r}")
        return True
    return value


def _coupon(where: str, raw: Any, c: _Checker) -> Coupon | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        c.add(f"{where}.coupon: must be a mapping like {{percent_off: 15, valid_days: 14}}")
        return None
    c.problems += _unknown_keys(f"{where}.coupon: ", raw, COUPON_KEYS)
    pct, days = raw.get("percent_off"), raw.get("valid_days", 14)
    if not isinstance(pct, (int, float)) or not 0 < pct <= 100:
        c.add(f"{where}.coupon.percent_off: a number above 0 and at most 100, got {pct!r}")
        pct = 10
    if not isinstance(days, int) or days < 1:
        c.add(f"{where}.coupon.valid_days: a whole number of days, got {days!r}")
        days = 14
    prefix = str(raw.get("prefix", "")).upper()
    if prefix and not re.fullmatch(r"[A-Z0-9]{1,8}", prefix):
        c.add(f"{where}.coupon.prefix: up to 8 letters or digits, got {prefix!r}")
    product = raw.get("product")
    if product is not None:
        product = c.column(f"{where}.coupon.product", product) or None
    return Coupon(float(pct), days, prefix, product)


def _exits(raw: Any, c: _Checker) -> list[Exit]:
    if not isinstance(raw, list):
        c.add("exit: must be a list like [{when: purchased_since_entry}]")
        return []
    exits = []
    for i, e in enumerate(raw):
        where = f"exit[{i}]"
        if not isinstance(e, dict) or "when" not in e:
            c.add(f"{where}: must be a mapping with a `when:` condition")
            continue
        c.problems += _unknown_keys(f"{where}: ", e, EXIT_KEYS)
        when = c.condition(f"{where}.when", e["when"])
        status = e.get("status", "converted")
        if not isinstance(status, str) or status not in EXIT_STATUSES:
            c.add(f"{where}.status: must be converted or exited, got {status!r}")
            status = "converted"
        then, channel, template, step_name, coupon, tracking = e.get("then"), None, None, None, None, True
        if then is not None:
            if not isinstance(then, dict):
                c.add(f"{where}.then: must be a mapping {{channel: email, template: ...}}")
            else:
                c.problems += _unknown_keys(f"{where}.then: ", then, THEN_KEYS)
                channels, template = c.channels_and_template(f"{where}.then", then.get("channel"), then.get("template"))
                channel = channels[0]
                step_name = then.get("name") or (template.rsplit("/", 1)[-1] if template else f"exit_{when}")
                if not isinstance(step_name, str) or not NAME.match(step_name):
                    c.add(f"{where}.then.name: lower_snake_case, got {step_name!r}")
                    step_name = f"exit_{i}"
                coupon = _coupon(f"{where}.then", then.get("coupon"), c)
                tracking = _tracking(f"{where}.then", then, c)
        params = _exit_params(f"{where}.params", e.get("params"), when, c)
        reason = e.get("reason", when)
        if reason is not None and (not isinstance(reason, str) or not NAME.match(reason)):
            c.add(f"{where}.reason: lower_snake_case, got {reason!r}")
        exits.append(Exit(when=when or "", status=status, message_step=step_name, channel=channel, template=template,
                          coupon=coupon, params=params, reason=str(reason or ""), tracking=tracking))
    reasons = [e.reason for e in exits]
    for dup in sorted({r for r in reasons if reasons.count(r) > 1}):
        c.add(f"exit: two rules record the reason {dup!r}; give one a `reason:` of its own")
    return exits


def _exit_params(where: str, raw: Any, condition: str | None, c: _Checker) -> dict[str, Any]:
    """`params: {holding: upgrade_product_id}`: values for parameters the condition declares."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        c.add(f"{where}: must be a mapping like {{holding: product_id}}")
        return {}
    declared = read_file_params(c.conditions_dir / f"{condition}.sql")[0] if condition else {}
    for name in sorted(set(raw) - set(declared), key=str):
        c.add(f"{where}: {condition} has no parameter {name!r}"
              + (f" (it has: {', '.join(sorted(declared))})" if declared else " (it declares none)"))
    for name, value in raw.items():
        if isinstance(value, (dict, list)):
            c.add(f"{where}.{name}: must be one value (text or a number), got {value!r}")
    return {k: v for k, v in raw.items() if k in declared}


def _audience(raw: Any, c: _Checker) -> str | None:
    """`audience: {audience_id: "2384..."}`: keep a Meta custom audience in step with active members."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not str(raw.get("audience_id", "")).strip():
        c.add("audience: must be a mapping like {audience_id: '23851234567890'}")
        return None
    c.problems += _unknown_keys("audience: ", raw, {"audience_id"})
    audience_id = str(raw["audience_id"]).strip()
    if not audience_id.isdigit():
        c.add(f"audience.audience_id: a Meta custom audience id is digits only, got {audience_id!r}")
    return audience_id


def _volume_guard(raw: Any, c: _Checker) -> VolumeGuard:
    if not isinstance(raw, dict):
        c.add("volume_guard: must be a mapping like {factor: 5, min_rows: 1000, history: 14}")
        return VolumeGuard()
    c.problems += _unknown_keys("volume_guard: ", raw, GUARD_KEYS)
    guard = VolumeGuard(**{k: raw[k] for k in GUARD_KEYS & set(raw)})
    if not (isinstance(guard.factor, (int, float)) and guard.factor > 1):
        c.add("volume_guard.factor: a number above 1")
    if not (isinstance(guard.min_rows, int) and guard.min_rows >= 0):
        c.add("volume_guard.min_rows: a whole number")
    if not (isinstance(guard.history, int) and guard.history >= 1):
        c.add("volume_guard.history: a whole number of past runs")
    return guard


def _check_sql(sql: str, params: set[str], c: _Checker) -> str:
    body = sql.strip().rstrip(";").strip()
    code = _strip_sql_comments_and_strings(body).strip()
    if not code:
        c.add("SQL: the file has a header but no SELECT under it")
        return body
    if not re.match(r"(?is)^(select|with)\b", code):
        c.add(f"SQL: must be one SELECT (or WITH ... SELECT), found {code.split()[0]!r}")
    if ";" in code:
        c.add("SQL: only one statement is allowed (found ';' inside the query)")
    unknown = bind_names(body) - RUN_PARAMS - params
    for name in sorted(unknown):
        c.add(
            f"SQL: parameter :{name} is not bound (the engine binds :interval_start, :interval_end, "
            f":as_of, :shop_url; add others under params:)"
        )
    return body


def _parts(parts: Any, binds: set[str], c: _Checker) -> int:
    if isinstance(parts, bool) or not isinstance(parts, int) or not 1 <= parts <= MAX_PARTS:
        c.add(f"parts: must be a whole number from 1 to {MAX_PARTS}, got {parts!r}")
        return 1
    missing = sorted({"part", "parts"} - binds)
    if parts > 1 and missing:
        # Without them every part would select every customer: each row staged `parts` times.
        c.add(f"parts: {parts} runs the SELECT {parts} times at once, each for part :part of :parts of the "
              f"customers, but the SQL does not use {', '.join(':' + m for m in missing)} (pass them on, e.g. "
              f"to lifecycle.recommend_for, or filter customers with lifecycle.in_part(customer_id, :part, "
              f":parts))")
    return parts


def _check_ties(sql: str, unique_columns: Any, sql_line: int, c: _Checker) -> None:
    """Every pick ends its ORDER BY in a unique column (lifecycle.determinism; README "Ties")."""
    if unique_columns is None:
        unique_columns = []
    if not isinstance(unique_columns, list) or not all(isinstance(x, str) and NAME.match(x) for x in unique_columns):
        c.add(f"unique_columns: must be a list of column names like [sku], got {unique_columns!r}")
        unique_columns = []
    c.problems += [f"SQL {finding}" for finding in _segment_ties(sql, tuple(unique_columns), sql_line)]


@functools.lru_cache(maxsize=256)
def _segment_ties(sql: str, unique_columns: tuple[str, ...], sql_line: int) -> tuple[str, ...]:
    """Scanned once per SQL body, like the conditions below: a file whose header alone changes (the
    header-checking tests load hundreds of variants of one segment) is not scanned again."""
    return tuple(str(finding) for finding in check_ties(sql, unique_columns, sql_line))


def condition_tie_problems(path: Path) -> list[str]:
    """A condition file's tie-prone picks, each naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [f"condition {path.name}: cannot read the file: {exc}"]
    return list(_condition_ties(path.name, text))


@functools.lru_cache(maxsize=256)
def _condition_ties(name: str, text: str) -> tuple[str, ...]:
    """Scanned once per parse, not once per journey using the condition (keyed by its text)."""
    return tuple(f"condition {name} {finding}" for finding in check_ties(text))


def discover(segments_dir: Path = SEGMENTS_DIR) -> list[Path]:
    return sorted(segments_dir.glob("*.sql"))


def load_all(segments_dir: Path = SEGMENTS_DIR, paths: list[Path] | None = None,
             **dirs) -> tuple[list[JourneySpec], list[SpecError]]:
    """Every segment file (or only `paths`), split into valid specs and errors; one broken file
    never hides the rest."""
    specs, errors = [], []
    for path in discover(segments_dir) if paths is None else paths:
        try:
            specs.append(load_spec(path, **dirs))
        except SpecError as exc:
            errors.append(exc)
        except Exception as exc:  # load_spec wraps what it can; whatever escapes is still this file's
            errors.append(SpecError(path, [f"could not be loaded: {type(exc).__name__}: {exc}"]))
    return specs, errors


# ------------------------------------------------------------------------ A/B variants


def _variants(where: str, raw: Any, raw_test: Any, channels: tuple[str, ...], action: str | None,
                   c: Any) -> tuple[tuple[Variant, ...], ABTest | None]:
    """A step's `variants:` and `ab_test:`; every problem goes to the checker `c` (spec._Checker)."""
    if raw is None:
        c.add(f"{where}.ab_test: only a step with variants: has an A/B test")
        return (), None
    if action:
        c.add(f"{where}.variants: an action step ({action}) sends nothing to test")
        return (), None
    if not isinstance(raw, list) or not 2 <= len(raw) <= MAX_VARIANTS:
        c.add(f"{where}.variants: must be a list of 2 to {MAX_VARIANTS} variants like "
              "[{name: a, weight: 50}, {name: b, weight: 50, subject: ...}]")
        return (), None
    variants: list[Variant] = []
    for i, v in enumerate(raw):
        name = _named_entry(f"{where}.variants[{i}]", v, VARIANT_KEYS, c, example=VARIANT_EXAMPLE,
                            fallback=f"variant_{i}", name_examples=" (e.g. a, b, short_subject)")
        if name is None:
            continue
        at = f"{where}.variants[{i}] ({name})"
        weight = v.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < math.inf:
            c.add(f"{at}.weight: a number above 0 (the share is weight / sum of weights), got {weight!r}")
            weight = 1
        template = v.get("template")
        if template is not None:
            template = c.channels_and_template(at, list(channels), template)[1]
        subject = _subject(at, v.get("subject"), channels, c)
        variants.append(Variant(name, float(weight), template, subject))
    names = [v.name for v in variants]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        c.add(f"{where}.variants: name {dup!r} is used twice")
    seen: dict[tuple, str] = {}
    for v in variants:
        if (v.template, v.subject) in seen:
            c.add(f"{where}.variants: {seen[(v.template, v.subject)]} and {v.name} send the same message "
                  "(give one a template: or a subject: of its own)")
        seen.setdefault((v.template, v.subject), v.name)
    return tuple(variants), _ab_test(where, raw_test, c)


def _subject(at: str, value: Any, channels: tuple[str, ...], c: Any) -> str | None:
    if value is None:
        return None
    if channels != ("email",):
        c.add(f"{at}.subject: only email steps have a subject (this step: {', '.join(channels)}); "
              "use template: for other channels")
        return None
    if not isinstance(value, str) or not value.strip() or "\n" in value.strip():
        c.add(f"{at}.subject: one line of text (Jinja, like a .subject.txt file), got {value!r}")
        return None
    import jinja2

    try:  # syntax only (which filters exist is lint's to check): no renderer at DAG parse time
        _template_syntax().parse(value)
    except jinja2.TemplateSyntaxError as exc:
        c.add(f"{at}.subject: {exc.message}")
    return value.strip()


@functools.cache
def _template_syntax():
    import jinja2

    return jinja2.Environment(**TEMPLATE_SYNTAX)


def _ab_test(where: str, raw: Any, c: Any) -> ABTest:
    if raw is None:
        return ABTest()
    if not isinstance(raw, dict):
        c.add(f"{where}.ab_test: must be a mapping like {{metric: converted, baseline_rate: 0.05, mde: 0.02, "
              "winner: auto}}")
        return ABTest()
    c.problems += _unknown_keys(f"{where}.ab_test: ", raw, AB_KEYS)
    test = ABTest(**{k: raw[k] for k in AB_KEYS & set(raw)})
    if test.metric not in METRICS:
        c.add(f"{where}.ab_test.metric: {' or '.join(METRICS)}, got {test.metric!r}")
    if test.winner not in WINNERS:
        c.add(f"{where}.ab_test.winner: auto (switch new sends to the winner) or manual, got {test.winner!r}")
    rate, mde = test.baseline_rate, test.mde
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1:
        c.add(f"{where}.ab_test.baseline_rate: the control's expected rate, a number between 0 and 1 "
              f"(0.05 = 5%), got {rate!r}")
    elif isinstance(mde, bool) or not isinstance(mde, (int, float)) or not 0 < mde < 1 - rate:
        c.add(f"{where}.ab_test.mde: the smallest difference in the rate worth detecting, a number above 0 "
              f"and below {1 - rate:g} (1 - baseline_rate), e.g. 0.02 for 2 points, got {mde!r}")
    return test
