"""Render journey emails from the Jinja templates in include/templates, in a sandbox.

Templates are analyst-owned files; the context is customer data. So:

- Jinja2's ``SandboxedEnvironment``: templates cannot reach Python internals
  (``''.__class__`` raises ``SecurityError``).
- Autoescape is on for ``.html`` and off for ``.txt`` (text part and subject), so a
  first name like ``<script>`` is shown escaped in HTML, and ``{{ 7*7 }}`` in the data
  is printed as is: values are never rendered as templates.
- ``StrictUndefined``: a typo (``row.cart_ur``) fails with the template file and line
  instead of sending an email with a hole in it.

An email template ``<journey>/<step>`` is three files next to each other::

    <journey>/<step>.subject.txt   one line (surrounding whitespace is stripped)
    <journey>/<step>.txt           the plain-text part
    <journey>/<step>.html          the HTML part; its CSS is inlined with css_inline

Context the engine passes (templates may rely on exactly these): ``shop``, ``customer``,
``row``, ``coupon`` (None or {code, percent_off, valid_until}), ``links``
({unsubscribe, preferences}), ``journey``, ``step``, ``currency`` (default EUR), ``kind``
(``marketing`` or ``transactional``, default marketing: a transactional email's footer offers
to unsubscribe from *marketing* emails, which is all an unsubscribe stops).
Note for template authors: use ``row["items"]``, not ``row.items`` (that is the dict
method).

Filters: ``money`` (``{{ 12.5|money('EUR') }}`` -> ``€12.50``; without an argument the
context's ``currency``), ``utm(url, campaign, content)``, ``percent`` (15, 15.0 or
Decimal('15.00') -> ``15%``; 12.5 -> ``12.5%``), and ``date`` / ``datetime``, which show a
moment in the customer's time zone and locale (``customer.timezone``, ``customer.locale``):

- a timestamp with an offset (ISO string, aware datetime) is converted to the customer's IANA
  zone (UTC when it is missing or unknown); a plain date (``2026-09-15``, a ``date``) and a
  timestamp without an offset are shown as they are, never shifted;
- ``date`` -> the locale's long date (en_GB ``15 September 2026``, en_US ``September 15, 2026``,
  de_DE ``15. September 2026``, pt_BR ``15 de setembro de 2026``; en_GB when the locale is
  missing or unknown); ``date("short"|"medium"|"long"|"full")``, or a CLDR skeleton such as
  ``date("MMMMd")`` (``15 September`` / ``September 15``) for other localised formats; a
  strftime format (``date("%-d %B")``) is applied as written, with English names;
- ``datetime`` -> date and time, en_GB ``15 September 2026, 23:32``, en_US
  ``September 15, 2026, 11:32 PM``.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import babel.dates
import css_inline
import jinja2
from babel import Locale, UnknownLocaleError
from jinja2 import FileSystemLoader, StrictUndefined, pass_context, select_autoescape
from jinja2.sandbox import SandboxedEnvironment

from lifecycle import inlining
from lifecycle.channels import CHANNELS
from lifecycle.config import SHOP, TEMPLATES_DIR
from lifecycle.spec import TEMPLATE_SYNTAX

__all__ = [
    "DEFAULT_LOCALE",
    "MissingTemplateError",
    "RenderedEmail",
    "TemplateRenderError",
    "available_templates",
    "check_template",
    "css_inlining",
    "format_date",
    "format_datetime",
    "get_environment",
    "missing_template_files",
    "money",
    "percent",
    "reload_changed_templates",
    "render_email",
    "render_email_for_send",
    "render_plain",
    "template_files",
    "utm",
]

log = logging.getLogger(__name__)
UTM_SOURCE = "lifecycle"
UTM_MEDIUM = "email"


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str  # CSS already inlined with css_inline, ready for mail clients


class TemplateRenderError(Exception):
    """A template failed to render; the message names the template, and the file and line."""

    def __init__(self, template: str, message: str, *, file: str | None = None, line: int | None = None):
        self.template = template
        self.file = file
        self.line = line
        where = f"template {template}"
        if file:
            where += f" ({file}, line {line})" if line else f" ({file})"
        super().__init__(f"{where}: {message}")


class MissingTemplateError(TemplateRenderError):
    """One or more of the files a template needs do not exist."""


# --------------------------------------------------------------------------- filters

# symbol, symbol goes before the amount, decimals
_CURRENCIES: dict[str, tuple[str, bool, int]] = {
    "EUR": ("€", True, 2),
    "USD": ("$", True, 2),
    "GBP": ("£", True, 2),
    "BRL": ("R$", True, 2),
    "JPY": ("¥", True, 0),
    "CAD": ("CA$", True, 2),
    "AUD": ("A$", True, 2),
    "CHF": ("CHF ", True, 2),
    "INR": ("₹", True, 2),
    "SEK": (" kr", False, 2),
    "DKK": (" kr.", False, 2),
    "NOK": (" kr", False, 2),
    "PLN": (" zł", False, 2),
}


def _to_decimal(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        return value
    try:
        return Decimal(str(value).strip())
    except (InvalidOperation, ValueError) as exc:
        raise ValueError(f"money: {value!r} is not a number") from exc


def money(value: Any, currency: str = "EUR") -> str:
    """Format an amount: 12.5, 'EUR' -> '€12.50'; 1250, 'JPY' -> '¥1,250'; unknown code -> '12.50 XYZ'."""
    if value is None or value == "":
        return ""
    code = (currency or "EUR").upper()
    symbol, before, decimals = _CURRENCIES.get(code, (None, False, 2))
    amount = _to_decimal(value).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)
    sign = "-" if amount < 0 else ""
    number = f"{abs(amount):,.{decimals}f}"
    if symbol is None:
        return f"{sign}{number} {code}"
    return f"{sign}{symbol}{number}" if before else f"{sign}{number}{symbol}"


@pass_context
def _money_filter(ctx, value: Any, currency: str | None = None) -> str:
    return money(value, currency or ctx.get("currency") or "EUR")


def utm(url: str, campaign: str, content: str | None = None) -> str:
    """Add utm_source=lifecycle&utm_medium=email&utm_campaign=..&utm_content=.. to a URL.

    Existing query parameters and the fragment are kept; existing utm_* values of the
    same names are replaced.
    """
    if not url:
        return ""
    return _utm(str(url), str(campaign), None if content is None else str(content))


@functools.lru_cache(maxsize=8192)
def _utm(url: str, campaign: str, content: str | None) -> str:
    # A send task tags the same product and shop links for message after message: parsed and
    # encoded once each (url parsing and encoding were a sixth of an email's render).
    parts = urlsplit(url)
    if parts.netloc and not parts.path:
        parts = parts._replace(path="/")
    ours = {"utm_source": UTM_SOURCE, "utm_medium": UTM_MEDIUM, "utm_campaign": campaign}
    if content is not None:
        ours["utm_content"] = content
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ours]
    query.extend(ours.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def percent(value: Any) -> str:
    """A discount as people write it: 15, 15.0, Decimal('15.00') -> '15%'; 12.5 -> '12.5%'; None -> ''.

    Coupons are numeric(5, 2) in the warehouse and reach templates as floats or Decimals,
    which print as '15.0' or '15.00'; at most two decimals are kept, trailing zeros never.
    """
    if value is None or value == "":
        return ""
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError) as exc:
        raise ValueError(f"percent: {value!r} is not a number") from exc
    if not number.is_finite():
        raise ValueError(f"percent: {value!r} is not a number")
    number = number.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP).normalize()
    return f"{number:f}%"


# Dates: shown in the customer's zone and locale; these are used when theirs are unknown.
DEFAULT_LOCALE = "en_GB"
_NAMED_DATE_FORMATS = ("short", "medium", "long", "full")


def _zone(name: Any) -> tzinfo:
    """The customer's IANA zone; UTC when it is missing or not a zone (never an error: the
    email still goes out, dated in UTC as before)."""
    return _zone_named(name.strip()) if isinstance(name, str) and name.strip() else UTC


@functools.lru_cache(maxsize=512)
def _zone_named(name: str) -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return UTC


def _locale(code: Any) -> Locale:
    """The customer's locale ('pt_BR' or 'pt-BR'); DEFAULT_LOCALE when missing or unknown."""
    return _locale_named(code.strip().replace("-", "_") if isinstance(code, str) else "")


@functools.lru_cache(maxsize=256)
def _locale_named(code: str) -> Locale:
    try:
        return Locale.parse(code or DEFAULT_LOCALE)
    except (UnknownLocaleError, ValueError, TypeError):
        return Locale.parse(DEFAULT_LOCALE)


def _local_moment(value: Any, zone: tzinfo) -> date | datetime | None:
    """What the customer should see: an aware timestamp in their zone; a plain date, or a
    timestamp without an offset, as it is (it names no instant to convert)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"date: {value!r} is not an ISO date (2026-09-15) or timestamp "
                             f"(2026-09-16T02:32:00+00:00)") from None
    if isinstance(value, datetime):
        return value.astimezone(zone) if value.utcoffset() is not None else value
    if isinstance(value, date):
        return value
    raise ValueError(f"date: {value!r} is not a date")


def _plain_spaces(text: str) -> str:
    # CLDR puts (narrow) no-break spaces in some formats ('11:32\u202fPM'); SMS encodings and
    # plain-text clients do better with an ordinary space.
    return text.replace("\u202f", " ").replace("\xa0", " ")


def _strftime(moment: date, fmt: str) -> str:
    # %-d (day without a leading zero) is not portable (Windows); expand it ourselves.
    return moment.strftime(fmt.replace("%-d", str(moment.day)))


def _localised_date(moment: date, fmt: str, locale: Locale) -> str:
    day = moment.date() if isinstance(moment, datetime) else moment
    if fmt in _NAMED_DATE_FORMATS:
        return _plain_spaces(babel.dates.format_date(day, fmt, locale=locale))
    try:
        return _plain_spaces(babel.dates.format_skeleton(fmt, day, locale=locale))
    except (KeyError, ValueError, TypeError):
        raise ValueError(
            f"date: unknown format {fmt!r}; use short, medium, long, full, a CLDR skeleton "
            "such as 'MMMMd', or a strftime format such as '%-d %B'"
        ) from None


def format_date(value: Any, fmt: str | None = None, *, timezone: Any = None, locale: Any = None) -> str:
    """The day a timestamp falls on in ``timezone`` (a plain date as is), in ``locale``'s words:
    '2026-09-16T02:32:00+00:00', America/Sao_Paulo, en_GB -> '15 September 2026'."""
    moment = _local_moment(value, _zone(timezone))
    if moment is None:
        return ""
    if fmt and "%" in fmt:
        return _strftime(moment, fmt)
    return _localised_date(moment, fmt or "long", _locale(locale))


def format_datetime(value: Any, fmt: str | None = None, *, timezone: Any = None, locale: Any = None) -> str:
    """Date and time in ``timezone``: en_GB '15 September 2026, 23:32', en_US
    'September 15, 2026, 11:32 PM'. A plain date has no time: it is shown as ``format_date``."""
    moment = _local_moment(value, _zone(timezone))
    if moment is None:
        return ""
    if fmt and "%" in fmt:
        return _strftime(moment, fmt)
    loc = _locale(locale)
    day = _localised_date(moment, fmt or "long", loc)
    if not isinstance(moment, datetime):
        return day
    clock = _plain_spaces(babel.dates.format_time(moment, "short", locale=loc))
    # The locale's way of joining a date and a time ('{1}, {0}'; quotes mark literal text).
    return loc.datetime_formats["medium"].replace("'", "").format(clock, day)


def _customer(ctx) -> dict:
    customer = ctx.get("customer")
    return customer if isinstance(customer, dict) else {}


@pass_context
def _date_filter(ctx, value: Any, fmt: str | None = None) -> str:
    customer = _customer(ctx)
    return format_date(value, fmt, timezone=customer.get("timezone"), locale=customer.get("locale"))


@pass_context
def _datetime_filter(ctx, value: Any, fmt: str | None = None) -> str:
    customer = _customer(ctx)
    return format_datetime(value, fmt, timezone=customer.get("timezone"), locale=customer.get("locale"))


# ----------------------------------------------------------------------- environment


@functools.cache
def _environment(templates_dir: Path, auto_reload: bool = True, slots: bool = False) -> SandboxedEnvironment:
    """`slots`: the send task's environment for HTML skeletons (lifecycle.inlining)."""
    env = SandboxedEnvironment(
        finalize=inlining.slot_finalize if slots else None,
        loader=FileSystemLoader(str(templates_dir)),
        auto_reload=auto_reload,
        autoescape=select_autoescape(
            enabled_extensions=("html", "htm", "xml"),
            disabled_extensions=("txt",),
            default_for_string=False,
            default=False,
        ),
        undefined=StrictUndefined,
        **TEMPLATE_SYNTAX,
    )
    env.filters["money"] = _money_filter
    env.filters["utm"] = utm
    env.filters["date"] = _date_filter
    env.filters["datetime"] = _datetime_filter
    env.filters["percent"] = percent
    return env


def get_environment(templates_dir: Path | str = TEMPLATES_DIR) -> SandboxedEnvironment:
    """The (cached) sandboxed environment for a templates directory."""
    return _environment(Path(templates_dir).resolve())


# ------------------------------------------------------------------------- templates


def template_files(
    template: str, channel: str = "email", templates_dir: Path | str = TEMPLATES_DIR
) -> list[Path]:
    """The files a template needs for a channel (its `Channel.template_files`; email:
    .subject.txt, .txt, .html)."""
    return _channel(channel).files(template, templates_dir)


def _channel(channel: str):
    if channel not in CHANNELS:
        raise ValueError(f"no template files defined for channel {channel!r} (known: {sorted(CHANNELS)})")
    return CHANNELS[channel]


def _suffixes(channel: str) -> tuple[str, ...]:
    return _channel(channel).template_files


def missing_template_files(
    template: str, channel: str = "email", templates_dir: Path | str = TEMPLATES_DIR
) -> list[Path]:
    """The files of ``template_files`` that do not exist (empty list: template complete)."""
    return _channel(channel).missing_files(template, templates_dir)


def available_templates(channel: str = "email", templates_dir: Path | str = TEMPLATES_DIR) -> list[str]:
    """Names of the complete templates for a channel (layouts and _partials excluded)."""
    base = Path(templates_dir)
    first = _suffixes(channel)[0]
    names = []
    for path in sorted(base.rglob(f"*{first}")):
        name = path.relative_to(base).as_posix()[: -len(first)]
        if any(part.startswith("_") for part in name.split("/")):
            continue
        if not missing_template_files(name, channel, base):
            names.append(name)
    return names


def _error_location(exc: BaseException, files: dict[str, str]) -> tuple[str | None, int | None]:
    """The template file and line an error came from (Jinja rewrites tracebacks to them)."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return exc.name or exc.filename, exc.lineno
    file = line = None
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename in files:
            file, line = files[filename], tb.tb_lineno
        tb = tb.tb_next
    return file, line


def _render_file(env: SandboxedEnvironment, template: str, name: str, context: dict,
                 compiled: jinja2.Template | None = None) -> str:
    try:
        return (compiled or env.get_template(name)).render(context)
    except jinja2.TemplateNotFound as exc:
        raise MissingTemplateError(template, f"template file not found: {exc.name}", file=name) from exc
    except Exception as exc:
        loader_root = Path(env.loader.searchpath[0])  # type: ignore[union-attr]
        files = {str(p): p.relative_to(loader_root).as_posix() for p in loader_root.rglob("*") if p.is_file()}
        file, line = _error_location(exc, files)
        if isinstance(exc, jinja2.TemplateError):
            message = f"{type(exc).__name__}: {exc.message or exc}"
        else:
            message = f"{type(exc).__name__}: {exc}"
        raise TemplateRenderError(template, message, file=file or name, line=line) from exc


@functools.lru_cache(maxsize=256)
def _compiled_source(env: SandboxedEnvironment, source: str):
    """A variant's subject compiled once per environment, not once per message."""
    return env.from_string(source)


def _render_source(env: SandboxedEnvironment, template: str, source: str, context: dict) -> str:
    """A variant's subject line (from the segment header), rendered like a .subject.txt file."""
    try:
        return _compiled_source(env, source).render(context)
    except Exception as exc:
        message = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
        raise TemplateRenderError(template, f"variant subject: {message}") from exc


def _default_context(context: dict) -> dict:
    ctx = dict(context)
    if not ctx.get("currency"):
        ctx["currency"] = "EUR"
    ctx.setdefault("coupon", None)
    ctx.setdefault("shop", dict(SHOP))
    ctx.setdefault("kind", "marketing")  # the journey's kind; the layout words a transactional footer
    return ctx


def _tidy_text(text: str) -> str:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def render_email(template: str, context: dict, templates_dir: Path | str | None = None, *,
                 subject: str | None = None) -> RenderedEmail:
    """Render ``<template>.subject.txt``, ``.txt`` and ``.html`` with ``context``; ``subject``
    (an A/B variant's subject line, Jinja source) replaces the ``.subject.txt`` file.

    Raises MissingTemplateError if a file is missing and TemplateRenderError (naming the
    file and line) for anything else: undefined variables, sandbox violations, a subject
    that is empty or longer than one line.
    """
    templates_dir = templates_dir or TEMPLATES_DIR  # read at call time: the configured folder
    env = get_environment(templates_dir)
    missing = missing_template_files(template, "email", templates_dir)
    if missing:
        names = ", ".join(p.name for p in missing)
        raise MissingTemplateError(template, f"missing template file(s): {names}")
    ctx = _default_context(context)
    if subject is not None:  # an A/B variant's subject line
        subject = _render_source(env, template, subject, ctx).strip()
    else:
        subject = _render_file(env, template, f"{template}.subject.txt", ctx).strip()
    _check_subject(template, subject)
    text = _tidy_text(_render_file(env, template, f"{template}.txt", ctx))
    html = _render_file(env, template, f"{template}.html", ctx)
    return RenderedEmail(subject=subject, text=text, html=_inline_css(template, html))


def _check_subject(template: str, subject: str) -> None:
    if not subject:
        raise TemplateRenderError(template, "subject is empty", file=f"{template}.subject.txt")
    if "\n" in subject or "\r" in subject:
        # (the subject itself is left out of the message: it may carry customer data)
        lines = len(subject.splitlines())
        raise TemplateRenderError(
            template, f"subject must be one line, got {lines} lines", file=f"{template}.subject.txt"
        )


def _inline_css(template: str, html: str) -> str:
    try:
        return inlining.inliner().inline(html)
    except css_inline.InlineError as exc:
        raise TemplateRenderError(template, f"CSS inlining failed: {exc}", file=f"{template}.html") from exc


# ------------------------------------------------------------------ the sender's path
#
# A send task renders hundreds of messages from a handful of templates: each template is loaded
# and compiled once (no file checks per message: the environment does not re-check files), and
# `reload_changed_templates()`, called once per batch, drops what was compiled when a file under
# the templates folder changed (an analyst's fix, then a retry of the task in the same process).

_templates_seen: dict[Path, tuple[int, int]] = {}


def _signature(folder: Path) -> tuple[int, int]:
    stats = [p.stat() for p in folder.rglob("*") if p.is_file()]
    return len(stats), max((st.st_mtime_ns for st in stats), default=0)


@functools.lru_cache(maxsize=16)
def _sender_folder(templates_dir: str) -> Path:
    """The templates folder, resolved once per batch rather than per message: a realpath is an
    lstat per path component, as much as rendering an SMS costs (reload_changed_templates
    forgets it, so a folder swapped under a symlink is seen at the next batch)."""
    return Path(templates_dir).resolve()


def reload_changed_templates(templates_dir: Path | str | None = None) -> bool:
    """Forget the sender's compiled templates if any file of the folder changed since the last
    call (True then). One directory walk: call it once per batch, not per message."""
    _sender_folder.cache_clear()
    folder = _sender_folder(str(templates_dir or TEMPLATES_DIR))
    signature = _signature(folder)
    if _templates_seen.get(folder) == signature:
        return False
    _templates_seen[folder] = signature
    _environment(folder, False).cache.clear()  # type: ignore[union-attr]
    _environment(folder, False, True).cache.clear()  # type: ignore[union-attr]
    _compiled.cache_clear()
    _html_shapes.cache_clear()
    return True


@functools.lru_cache(maxsize=256)
def _compiled(folder: Path, template: str, channel: str) -> tuple[SandboxedEnvironment, list[jinja2.Template]]:
    """The environment and the channel's templates of `template` (email: subject, text, HTML),
    compiled once."""
    env = _environment(folder, False)
    names = [p.relative_to(folder).as_posix() for p in template_files(template, channel, folder)]
    compiled = []
    for name in names:
        try:
            compiled.append(env.get_template(name))
        except jinja2.TemplateNotFound:
            missing = ", ".join(p.name for p in missing_template_files(template, channel, folder))
            raise MissingTemplateError(template, f"missing template file(s): {missing}") from None
        except Exception as exc:  # a syntax error: named with its file and line, as at render time
            _render_file(env, template, name, {}, compiled=_Raising(exc))
    return env, compiled


class _Raising:
    """Stands for a template that failed to compile: rendering it raises the compile error."""

    def __init__(self, exc: Exception):
        self.exc = exc

    def render(self, context: dict) -> str:
        raise self.exc


def render_email_for_send(template: str, context: dict, templates_dir: Path | str | None = None, *,
                          subject: str | None = None) -> RenderedEmail:
    """`render_email` for the send task: the same result and errors, from templates compiled once."""
    folder = _sender_folder(str(templates_dir or TEMPLATES_DIR))
    env, (subject_t, text_t, html_t) = _compiled(folder, template, "email")
    ctx = _default_context(context)
    if subject is not None:  # an A/B variant's subject line
        subject = _render_source(env, template, subject, ctx).strip()
    else:
        subject = _render_file(env, template, f"{template}.subject.txt", ctx, subject_t).strip()
    _check_subject(template, subject)
    text = _tidy_text(_render_file(env, template, f"{template}.txt", ctx, text_t))
    return RenderedEmail(subject=subject, text=text, html=_inlined_html(folder, env, template, ctx, html_t))


def _inlined_html(folder: Path, env: SandboxedEnvironment, template: str, ctx: dict, html_t) -> str:
    """The HTML part with its CSS inlined once per shape of the template (lifecycle.inlining),
    or, where that could differ, as render_email inlines it: the same string either way."""

    def per_message() -> str:
        return _inline_css(template, _render_file(env, template, f"{template}.html", ctx, html_t))

    skeletons, shapes, _ = _html_shapes(folder, template)
    if skeletons is None:
        inlining.counts["per message"] += 1
        return per_message()
    try:
        skeleton, values = inlining.render_skeleton(skeletons, ctx)
    except Exception:  # the message's own rendering raises it, named with its file and line
        return per_message()
    return inlining.inline(shapes, skeleton, values, per_message)


@functools.lru_cache(maxsize=256)
def _html_shapes(folder: Path, template: str) -> tuple[jinja2.Template | None, dict, str | None]:
    """`template`'s HTML compiled to render skeletons, the shapes inlined so far, and why its
    CSS is inlined per message instead (then no skeleton template)."""
    env = _environment(folder, False, True)
    try:
        problem = inlining.template_problem(env, f"{template}.html")
        skeletons = None if problem else env.get_template(f"{template}.html")
    except Exception as exc:  # the per-message path raises it, named with its file and line
        problem, skeletons = f"{type(exc).__name__}: {exc}", None
    if problem:
        log.info("template %s: CSS inlined message by message (%s)", template, problem)
    return skeletons, {}, problem


def css_inlining(template: str, templates_dir: Path | str | None = None) -> str | None:
    """Why the send task inlines `template`'s CSS message by message; None when it does it once
    per shape of the template (see lifecycle.inlining)."""
    return _html_shapes(Path(templates_dir or TEMPLATES_DIR).resolve(), template)[2]


def render_plain(template: str, channel: str, context: dict, templates_dir: Path | str | None = None, *,
                 for_send: bool = False) -> list[str]:
    """Each of the channel's template files rendered as one line of text (white space folded):
    what SMS, push and any channel without a layout show. `for_send`: from the templates the send
    task compiled once (see reload_changed_templates), without looking at the files again."""
    folder = Path(templates_dir or TEMPLATES_DIR)  # read at call time: the configured folder
    if for_send:
        env, compiled = _compiled(_sender_folder(str(folder)), template, channel)
    else:
        env = get_environment(folder)
        missing = missing_template_files(template, channel, folder)
        if missing:
            raise MissingTemplateError(template, f"missing template file(s): {', '.join(p.name for p in missing)}")
        compiled = [None] * len(_suffixes(channel))
    ctx = _default_context(context)
    return [" ".join(_render_file(env, template, f"{template}{suffix}", ctx, t).split())
            for suffix, t in zip(_suffixes(channel), compiled, strict=True)]


def render_sms(template: str, context: dict, templates_dir: Path | str | None = None, *,
               for_send: bool = False) -> str:
    """``<template>.sms.txt`` as one line of text (white space folded: SMS has no layout)."""
    (body,) = render_plain(template, "sms", context, templates_dir, for_send=for_send)
    if not body:
        raise TemplateRenderError(template, "SMS body is empty", file=f"{template}.sms.txt")
    return body


def render_push(template: str, context: dict, templates_dir: Path | str | None = None, *,
                for_send: bool = False) -> dict:
    """``<template>.push-title.txt`` and ``.push-body.txt``; the click URL comes from the
    segment row's ``url`` (or the shop's home page)."""
    title, body = render_plain(template, "push", context, templates_dir, for_send=for_send)
    row = context.get("row") or {}
    shop = context.get("shop") or SHOP
    return {"title": title, "body": body, "url": row.get("url") or shop["base_url"]}


# ----------------------------------------------------------------------------- lint


def _referenced_with_context(tree: jinja2.nodes.Template) -> list[str]:
    """Templates this one extends or includes (they share its context, `row` included)."""
    names = []
    for node in tree.find_all((jinja2.nodes.Extends, jinja2.nodes.Include)):
        if isinstance(node.template, jinja2.nodes.Const) and isinstance(node.template.value, str):
            names.append(node.template.value)
    return names


def _row_fields(tree: jinja2.nodes.Template) -> set[str]:
    """Segment columns used as `row.<name>` or `row["name"]` (dict methods such as row.get aside)."""
    fields = set()
    for node in tree.find_all(jinja2.nodes.Getattr):
        if isinstance(node.node, jinja2.nodes.Name) and node.node.name == "row" and not hasattr(dict, node.attr):
            fields.add(node.attr)
    for node in tree.find_all(jinja2.nodes.Getitem):
        if (isinstance(node.node, jinja2.nodes.Name) and node.node.name == "row"
                and isinstance(node.arg, jinja2.nodes.Const) and isinstance(node.arg.value, str)):
            fields.add(node.arg.value)
    return fields


def check_template(
    template: str, channel: str = "email", templates_dir: Path | str | None = None
) -> tuple[list[str], set[str]]:
    """Compile every file of a template (and the layouts and includes it uses) with the sandbox
    environment the sender uses: (problems, each naming file and line; the `row` fields used)."""
    env = get_environment(templates_dir or TEMPLATES_DIR)
    problems: list[str] = []
    fields: set[str] = set()
    todo = [f"{template}{suffix}" for suffix in _suffixes(channel)]
    seen: set[str] = set()
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.add(name)
        try:
            source, _, _ = env.loader.get_source(env, name)  # type: ignore[union-attr]
            tree = env.parse(source, name)
            env.compile(tree, name)
        except jinja2.TemplateNotFound:
            problems.append(f"include/templates/{name}: file not found")
            continue
        except jinja2.TemplateSyntaxError as exc:
            problems.append(f"include/templates/{name} line {exc.lineno}: {exc.message}")
            continue
        fields |= _row_fields(tree)
        todo += _referenced_with_context(tree)
    return problems, fields
