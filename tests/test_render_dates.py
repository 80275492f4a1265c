"""Dates in templates: the customer's day, in the customer's time zone and locale (issue 8, item 4).

A parcel delivered at 23:32 on 15 September in São Paulo is stored as 02:32 UTC on the 16th;
the email must say it arrived on the 15th. The `date` and `datetime` filters read
`customer.timezone` and `customer.locale` from the context; plain dates never move.
"""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from conftest import _admin_url, _fresh_database

from lifecycle.config import SEGMENTS_DIR
from lifecycle.render import TemplateRenderError, format_date, format_datetime, get_environment, render_email

SAO_PAULO_LATE = "2026-09-16T02:32:00+00:00"  # 23:32 on 15 September in São Paulo (UTC-3)


def render(source: str, value, *, tz: str | None = None, locale: str | None = "en_GB", **extra) -> str:
    customer = {"first_name": "Ana", "timezone": tz, "locale": locale}
    return get_environment().from_string(source).render(v=value, customer=customer, **extra)


# ------------------------------------------------------------------ the customer's time zone


@pytest.mark.parametrize(
    "value",
    [SAO_PAULO_LATE, "2026-09-16T02:32:00Z", "2026-09-15T23:32:00-03:00",
     datetime(2026, 9, 16, 2, 32, tzinfo=UTC), datetime(2026, 9, 15, 23, 32, tzinfo=timezone(timedelta(hours=-3)))],
    ids=["utc-offset", "z", "local-offset", "aware-utc", "aware-local"],
)
def test_a_late_evening_delivery_in_sao_paulo_is_the_15th(value):
    assert render("{{ v|date }}", value, tz="America/Sao_Paulo") == "15 September 2026"
    assert render("{{ v|datetime }}", value, tz="America/Sao_Paulo") == "15 September 2026, 23:32"
    assert render('{{ v|date("%-d %B") }}', value, tz="America/Sao_Paulo") == "15 September"
    # the same instant is already the 16th in London (BST) and in UTC
    assert render("{{ v|date }}", value, tz="Europe/London") == "16 September 2026"
    assert render("{{ v|datetime }}", value, tz="UTC") == "16 September 2026, 02:32"


@pytest.mark.parametrize(
    ("tz", "instant", "shown"),
    [
        # UTC+14: the day starts at 10:00 UTC of the day before
        ("Pacific/Kiritimati", "2026-09-15T09:59:00Z", "15 September 2026, 23:59"),
        ("Pacific/Kiritimati", "2026-09-15T10:00:00Z", "16 September 2026, 00:00"),
        # UTC-12 (POSIX sign: Etc/GMT+12 is twelve hours behind): the day starts at 12:00 UTC
        ("Etc/GMT+12", "2026-09-16T11:59:00Z", "15 September 2026, 23:59"),
        ("Etc/GMT+12", "2026-09-16T12:00:00Z", "16 September 2026, 00:00"),
    ],
)
def test_the_edges_of_the_world_around_midnight(tz, instant, shown):
    assert render("{{ v|datetime }}", instant, tz=tz) == shown
    assert render("{{ v|date }}", instant, tz=tz) == shown.split(",")[0]


@pytest.mark.parametrize(
    ("tz", "instant", "shown"),
    [
        # London springs forward at 01:00 UTC on 29 March 2026: 00:59 GMT, then 02:00 BST.
        ("Europe/London", "2026-03-29T00:59:00Z", "29 March 2026, 00:59"),
        ("Europe/London", "2026-03-29T01:00:00Z", "29 March 2026, 02:00"),
        ("Europe/London", "2026-03-28T23:30:00Z", "28 March 2026, 23:30"),  # GMT: still the 28th
        ("Europe/London", "2026-03-29T23:30:00Z", "30 March 2026, 00:30"),  # BST: already the 30th
        # New York falls back at 06:00 UTC on 1 November 2026: 01:30 happens twice.
        ("America/New_York", "2026-11-01T05:30:00Z", "1 November 2026, 01:30"),  # EDT
        ("America/New_York", "2026-11-01T06:30:00Z", "1 November 2026, 01:30"),  # EST
        ("America/New_York", "2026-11-01T03:59:00Z", "31 October 2026, 23:59"),  # EDT, UTC-4
        ("America/New_York", "2026-11-02T04:59:00Z", "1 November 2026, 23:59"),  # EST, UTC-5
        ("America/New_York", "2026-11-02T05:00:00Z", "2 November 2026, 00:00"),
    ],
)
def test_dst_changes(tz, instant, shown):
    assert render("{{ v|datetime }}", instant, tz=tz) == shown
    assert render("{{ v|date }}", instant, tz=tz) == shown.split(",")[0]


@pytest.mark.parametrize("tz", ["Pacific/Kiritimati", "Etc/GMT+12", "America/Sao_Paulo", "Asia/Tokyo", None])
@pytest.mark.parametrize("value", ["2027-02-28", date(2027, 2, 28), "2027-02-28T12:00:00"],
                         ids=["iso-date", "date", "no-offset"])
def test_a_plain_date_is_never_shifted(tz, value):
    """A birthday or a last day is a day on the calendar, not an instant: same day everywhere.
    A timestamp without an offset names no instant either: it is shown as written."""
    assert render("{{ v|date }}", value, tz=tz) == "28 February 2027"
    assert render('{{ v|date("MMMMd") }}', value, tz=tz) == "28 February"
    if not isinstance(value, str) or len(value) == 10:
        assert render("{{ v|datetime }}", value, tz=tz) == "28 February 2027"  # no time to show


@pytest.mark.parametrize("tz", [None, "", "Mars/Olympus_Mons", "../../etc/passwd", 42])
def test_a_missing_or_unknown_zone_falls_back_to_utc_quietly(tz):
    shown = render("{{ v|datetime }}", SAO_PAULO_LATE, tz=tz)
    assert shown == "16 September 2026, 02:32"
    assert "UTC" not in shown  # nothing is said to the customer


def test_no_customer_at_all_is_utc_in_en_gb():
    assert get_environment().from_string("{{ v|date }}").render(v=SAO_PAULO_LATE) == "16 September 2026"


# ------------------------------------------------------------------------- the locale's words


@pytest.mark.parametrize(
    ("locale", "long_date", "date_time", "day_month"),
    [
        ("en_GB", "15 September 2026", "15 September 2026, 23:32", "15 September"),
        ("en_US", "September 15, 2026", "September 15, 2026, 11:32 PM", "September 15"),
        ("de_DE", "15. September 2026", "15. September 2026, 23:32", "15. September"),
        ("pt_BR", "15 de setembro de 2026", "15 de setembro de 2026 23:32", "15 de setembro"),
        ("pt-BR", "15 de setembro de 2026", "15 de setembro de 2026 23:32", "15 de setembro"),
        ("fr_FR", "15 septembre 2026", "15 septembre 2026, 23:32", "15 septembre"),
        ("es_ES", "15 de septiembre de 2026", "15 de septiembre de 2026, 23:32", "15 de septiembre"),
        ("nl_NL", "15 september 2026", "15 september 2026, 23:32", "15 september"),
        ("ja_JP", "2026年9月15日", "2026年9月15日 23:32", "9月15日"),
        # unknown or missing locale: the shop's default
        ("xx_YY", "15 September 2026", "15 September 2026, 23:32", "15 September"),
        (None, "15 September 2026", "15 September 2026, 23:32", "15 September"),
    ],
)
def test_locale_formats(locale, long_date, date_time, day_month):
    assert render("{{ v|date }}", SAO_PAULO_LATE, tz="America/Sao_Paulo", locale=locale) == long_date
    assert render("{{ v|datetime }}", SAO_PAULO_LATE, tz="America/Sao_Paulo", locale=locale) == date_time
    assert render('{{ v|date("MMMMd") }}', SAO_PAULO_LATE, tz="America/Sao_Paulo", locale=locale) == day_month
    # a strftime format is applied as written, in the customer's zone
    assert render('{{ v|date("%Y-%m-%d") }}', SAO_PAULO_LATE, tz="America/Sao_Paulo", locale=locale) == "2026-09-15"


def test_the_python_functions_match_the_filters():
    assert format_date(SAO_PAULO_LATE, timezone="America/Sao_Paulo", locale="en_US") == "September 15, 2026"
    assert format_datetime(SAO_PAULO_LATE, "full", timezone="America/Sao_Paulo") == \
        "Tuesday, 15 September 2026, 23:32"
    assert format_date(None) == format_date("") == format_datetime(None) == ""


# ---------------------------------------------------------------------- mistakes fail loudly


def test_a_bad_value_or_format_names_the_template_file_and_line(tmp_path):
    (tmp_path / "j").mkdir()
    (tmp_path / "j/s.subject.txt").write_text("Hi")
    (tmp_path / "j/s.html").write_text("<p>x</p>")
    ctx = {"customer": {"timezone": "Europe/Berlin", "locale": "de_DE"}, "row": {"when": "15/09/2026"}}
    (tmp_path / "j/s.txt").write_text("line one\n{{ row.when|date }}\n")
    with pytest.raises(TemplateRenderError) as info:
        render_email("j/s", ctx, templates_dir=tmp_path)
    assert (info.value.file, info.value.line) == ("j/s.txt", 2)
    assert "'15/09/2026' is not an ISO date" in str(info.value)
    (tmp_path / "j/s.txt").write_text('{{ "2026-09-15"|date("no such format") }}\n')
    get_environment(tmp_path).cache.clear()
    with pytest.raises(TemplateRenderError, match=r"j/s\.txt.*date: unknown format 'no such format'"):
        render_email("j/s", ctx, templates_dir=tmp_path)


# ------------------------------------------------------------------ the shipped templates


def context(template: str, row: dict, *, tz: str | None, locale: str | None = "en_GB", coupon=None) -> dict:
    journey, step = template.split("/")
    return {
        "customer": {"customer_id": 42, "first_name": "Ana", "last_name": "Silva", "email": "ana@example.com",
                     "locale": locale, "country": "BR", "timezone": tz},
        "row": copy.deepcopy(row),
        "coupon": coupon,
        "links": {"unsubscribe": "https://shop.example.com/u", "preferences": "https://shop.example.com/p"},
        "journey": journey,
        "step": step,
    }


REVIEW_ROW = {"order_id": 5512, "delivered_at": SAO_PAULO_LATE, "items": [
    {"product_id": 11, "name": "Linen Shirt", "image_url": "https://cdn.example.com/11.jpg",
     "review_url": "https://shop.example.com/review/5512/11"}]}


@pytest.mark.parametrize(("tz", "locale", "day"), [
    ("America/Sao_Paulo", "en_GB", "15 September 2026"),
    ("America/Sao_Paulo", "pt_BR", "15 de setembro de 2026"),
    ("Europe/London", "en_GB", "16 September 2026"),
])
def test_review_request_says_the_day_it_arrived_where_the_customer_lives(tz, locale, day):
    email = render_email("review_request/request", context("review_request/request", REVIEW_ROW, tz=tz,
                                                            locale=locale))
    assert f"arrived on {day}" in email.text and f"arrived on {day}" in email.html


def test_a_coupon_ends_on_the_customers_day():
    """A code that stops working at 02:00 UTC on 1 October stops on 30 September in São Paulo."""
    coupon = {"code": "WELCOME10", "percent_off": 10.0, "valid_until": "2026-10-01T02:00:00+00:00"}
    row = {"welcome_at": "2026-09-17T09:12:40+00:00"}
    for tz, day in (("America/Sao_Paulo", "30 September 2026"), ("Asia/Tokyo", "1 October 2026")):
        email = render_email("welcome/email_1", context("welcome/email_1", row, tz=tz, coupon=coupon))
        assert f"Valid until {day}" in email.text, email.text


def test_the_birthday_sms_and_subject_use_the_customers_words_and_day():
    coupon = {"code": "BD-1", "percent_off": 20.0, "valid_until": "2027-03-10T02:00:00+00:00"}
    ctx = context("birthday/follow_up", {"celebration_date": "2027-02-28"}, tz="America/Sao_Paulo",
                  locale="en_US", coupon=coupon)
    assert render_email("birthday/follow_up", ctx).subject == "Your birthday 20% off ends March 9"
    from lifecycle.render import render_sms

    sms = render_sms("birthday/email", {**ctx, "step": "email"})
    assert "20% off with code BD-1 until Mar 9." in sms


# ---------------------------------------------------- end to end: the engine, a real SMTP server


@pytest.fixture()
def warehouse(request):
    """A fresh database holding the shop's tables, on the embedded server."""
    from lifecycle.schema import create_shop_schema

    url, drop = _fresh_database(_admin_url(request, "embedded"))
    engine = sa.create_engine(url)
    create_shop_schema(engine)
    yield engine
    engine.dispose()
    drop()


# Three customers whose parcels arrive at the same instant, 02:32 UTC on 16 September 2026.
CUSTOMERS = [
    # id, email, timezone, locale, the day the email must name
    (1, "ana@example.com", "America/Sao_Paulo", "pt_BR", "15 de setembro de 2026"),
    (2, "bea@example.com", "America/Sao_Paulo", "en_GB", "15 September 2026"),
    (3, "cal@example.com", "Europe/London", "en_GB", "16 September 2026"),
    (4, "dan@example.com", None, None, "16 September 2026"),  # nothing on file: UTC, en_GB
]


def plant_deliveries(engine) -> None:
    delivered = datetime(2026, 9, 16, 2, 32, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO shop.products (product_id, sku, name, category, price, product_type) "
                             "VALUES (11, 'LIN-11', 'Linen Shirt', 'clothing', 49, 'soft')"))
        for cid, email, tz, locale, _ in CUSTOMERS:
            conn.execute(
                sa.text("INSERT INTO shop.customers (customer_id, email, first_name, country, timezone, locale, "
                        "created_at) VALUES (:id, :email, 'Test', 'BR', :tz, :locale, :created)"),
                {"id": cid, "email": email, "tz": tz, "locale": locale, "created": delivered - timedelta(days=90)},
            )
            conn.execute(
                sa.text("INSERT INTO shop.consents (customer_id, channel, status, source, updated_at) "
                        "VALUES (:id, 'email', 'opted_in', 'test', :t)"),
                {"id": cid, "t": delivered - timedelta(days=90)},
            )
            conn.execute(
                sa.text("INSERT INTO shop.orders (order_id, customer_id, ordered_at, status, total, shipped_at, "
                        "delivered_at, shipping_country) VALUES (:id, :cid, :ordered, 'delivered', 49, :shipped, "
                        ":delivered, 'BR')"),
                {"id": 100 + cid, "cid": cid, "ordered": delivered - timedelta(days=7),
                 "shipped": delivered - timedelta(days=5), "delivered": delivered},
            )
            conn.execute(sa.text("INSERT INTO shop.order_items (order_id, product_id, quantity, unit_price) "
                                 "VALUES (:id, 11, 1, 49)"), {"id": 100 + cid})


def test_the_review_request_sent_by_the_engine_names_the_local_day(warehouse):
    from lifecycle.channels.email import EmailChannel
    from lifecycle.replay import run_interval
    from lifecycle.smtp_sink import RecordingSMTPServer
    from lifecycle.spec import load_spec

    plant_deliveries(warehouse)
    # The request comes due 10 days after delivery (soft goods): the daily run ending 27 September.
    end = datetime(2026, 9, 27, tzinfo=UTC)
    with RecordingSMTPServer() as smtp:
        result = run_interval(warehouse, load_spec(SEGMENTS_DIR / "review_request.sql"), end - timedelta(days=1),
                              end, lambda name: EmailChannel("127.0.0.1", smtp.port))
        received = {m.rcpt_tos[0]: m.message() for m in smtp.messages}
    assert result["messages"] == {"sent": len(CUSTOMERS)}
    assert set(received) == {email for _, email, *_ in CUSTOMERS}
    for cid, email, tz, _, day in CUSTOMERS:
        message = received[email]
        text = message.get_body(("plain",)).get_content()
        html = message.get_body(("html",)).get_content()
        assert f"order #{100 + cid} arrived on {day}" in text and f"arrived on {day}" in html, (email, text)
        local = datetime(2026, 9, 16, 2, 32, tzinfo=UTC).astimezone(ZoneInfo(tz or "UTC"))
        assert str(local.day) in day  # the day really is the customer's local day of delivery
