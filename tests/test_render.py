"""Email rendering: every shipped template renders, looks like an email, and is safe with hostile data."""

from __future__ import annotations

import copy
import html as htmllib
import json
import re
from collections import Counter
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jinja2.sandbox import SecurityError

from lifecycle import inlining
from lifecycle.config import SHOP, TEMPLATES_DIR
from lifecycle.render import (
    MissingTemplateError,
    RenderedEmail,
    TemplateRenderError,
    available_templates,
    css_inlining,
    get_environment,
    missing_template_files,
    money,
    percent,
    render_email,
    render_email_for_send,
    render_push,
    render_sms,
    template_files,
    utm,
)

UNSUBSCRIBE = "https://shop.example.com/unsubscribe?token=t0k3n&c=42"
PREFERENCES = "https://shop.example.com/preferences?token=t0k3n"
COUPON = {"code": "COMEBACK15", "percent_off": 15, "valid_until": "2025-04-30T23:59:59+00:00"}

CART_ROW = {
    "cart_id": 7001,
    "cart_updated_at": "2025-03-05T10:00:00+00:00",
    "cart_url": "https://shop.example.com/cart/7001?token=abc",
    "items": [
        {
            "product_id": 11,
            "name": "Linen Shirt",
            "image_url": "https://cdn.shop.example.com/p/11.jpg",
            "quantity": 2,
            "unit_price": 49.0,
            "product_url": "https://shop.example.com/p/linen-shirt",
        },
        {
            "product_id": 12,
            "name": "Canvas Tote Bag",
            "image_url": "https://cdn.shop.example.com/p/12.jpg",
            "quantity": 1,
            "unit_price": 19.5,
            "product_url": "https://shop.example.com/p/canvas-tote",
        },
    ],
    "cart_total": 117.5,
}
WIN_BACK_ROW = {
    "last_order_at": "2024-11-02T14:20:00+00:00",
    "last_order_id": 991,
    "days_since_last_order": 123,
    "orders_count": 4,
}
REVIEW_ROW = {
    "order_id": 5512,
    "delivered_at": "2025-03-01T09:00:00+00:00",
    "items": [
        {
            "product_id": 11,
            "name": "Linen Shirt",
            "image_url": "https://cdn.shop.example.com/p/11.jpg",
            "review_url": "https://shop.example.com/review/5512/11",
        },
        {
            "product_id": 31,
            "name": "Stoneware Mug",
            "image_url": "https://cdn.shop.example.com/p/31.jpg",
            "review_url": "https://shop.example.com/review/5512/31",
        },
    ],
}
BROWSE_PRODUCT = {"product_id": 11, "name": "Linen Shirt", "image_url": "https://cdn.shop.example.com/p/11.jpg",
                  "price": 49.0, "product_url": "https://shop.example.com/p/linen-shirt"}
BROWSE_ROW = {
    "viewed": [BROWSE_PRODUCT],
    "suggested": [{**BROWSE_PRODUCT, "product_id": 12, "name": "Canvas Tote Bag", "price": 19.5,
                   "image_url": "https://cdn.shop.example.com/p/12.jpg",
                   "product_url": "https://shop.example.com/p/canvas-tote"}],
    "url": "https://shop.example.com/p/linen-shirt",
    "last_viewed_at": "2025-03-01T09:00:00+00:00",
}
BIRTHDAY_ROW = {"celebration_date": "2027-02-28"}
ROWS = {"cart_abandonment": CART_ROW, "win_back": WIN_BACK_ROW, "review_request": REVIEW_ROW,
        "browse_abandonment": BROWSE_ROW, "birthday": BIRTHDAY_ROW, "birthday_ask": {}}

# Templates that list the row's items (name, image, and for carts the prices).
CART_REMINDERS = {"cart_abandonment/reminder_1", "cart_abandonment/reminder_2", "cart_abandonment/reminder_3"}
REVIEW_LISTS = {"review_request/request", "review_request/reminder"}

EXPECTED_TEMPLATES = {
    "cart_abandonment/reminder_1",
    "cart_abandonment/reminder_2",
    "cart_abandonment/reminder_3",
    "cart_abandonment/thank_you",
    "win_back/email_1",
    "win_back/email_2",
    "win_back/email_3",
    "win_back/thank_you",
    "review_request/request",
    "review_request/reminder",
    "review_request/thank_you",
    "review_request/service_recovery",
    "browse_abandonment/email_1",
    "browse_abandonment/second_touch",
    "birthday/email",
    "birthday/follow_up",
    "birthday_ask/ask",
}

# The catalogue's other journeys bring their sample row and template list as
# tests/render_samples/<journey>.json: {"row": {...}, "templates": ["<journey>/<step>", ...]}.
SAMPLES_DIR = Path(__file__).parent / "render_samples"
for _sample in sorted(SAMPLES_DIR.glob("*.json")):
    _data = json.loads(_sample.read_text(encoding="utf-8"))
    ROWS[_sample.stem] = _data["row"]
    EXPECTED_TEMPLATES |= set(_data["templates"])

TAG = re.compile(r"<\s*/?\s*[a-zA-Z][a-zA-Z0-9]*(\s[^<>]*)?/?\s*>")


def make_context(template: str, *, coupon=None, first_name="Ana", row=None, currency="EUR") -> dict:
    journey, step = template.split("/")
    return {
        "shop": dict(SHOP),
        "customer": {
            "customer_id": 42,
            "first_name": first_name,
            "last_name": "Silva",
            "email": "ana.silva@example.com",
            "locale": "en_GB",
            "country": "GB",
        },
        "row": copy.deepcopy(ROWS[journey] if row is None else row),
        "coupon": coupon,
        "links": {"unsubscribe": UNSUBSCRIBE, "preferences": PREFERENCES},
        "journey": journey,
        "step": step,
        "currency": currency,
    }


def shipped_templates() -> list[str]:
    """Template names found on disk (by their subject file), layouts excluded."""
    names = []
    for path in sorted(TEMPLATES_DIR.rglob("*.subject.txt")):
        name = path.relative_to(TEMPLATES_DIR).as_posix().removesuffix(".subject.txt")
        if not name.startswith("_layouts/"):
            names.append(name)
    return names


def test_the_expected_templates_ship_complete():
    assert set(shipped_templates()) == EXPECTED_TEMPLATES
    assert set(available_templates()) == EXPECTED_TEMPLATES
    for name in EXPECTED_TEMPLATES:
        assert missing_template_files(name) == [], name


def test_no_stray_template_files():
    """Every .html/.txt outside the shared `_` folders (layouts, service pages) belongs to a
    complete template."""
    for path in TEMPLATES_DIR.rglob("*"):
        if path.is_dir() or any(part.startswith("_") for part in path.relative_to(TEMPLATES_DIR).parts):
            continue
        name = path.relative_to(TEMPLATES_DIR).as_posix()
        base = re.sub(r"(\.subject\.txt|\.sms\.txt|\.push-title\.txt|\.push-body\.txt|\.txt|\.html)$", "", name)
        assert base in EXPECTED_TEMPLATES, f"{name} is not part of a known template"


@pytest.mark.parametrize(
    "path", sorted(p for p in TEMPLATES_DIR.rglob("*") if p.is_file()), ids=lambda p: p.name
)
def test_every_template_file_starts_with_a_comment(path: Path):
    """Analysts read these: each file says at the top what it is / when it is sent."""
    first = path.read_text(encoding="utf-8").lstrip()
    assert first.startswith("{#"), f"{path} should start with a {{# comment #}}"


@pytest.mark.parametrize("template", sorted(EXPECTED_TEMPLATES))
@pytest.mark.parametrize("with_coupon", [False, True], ids=["no-coupon", "coupon"])
def test_every_template_renders(template: str, with_coupon: bool):
    ctx = make_context(template, coupon=COUPON if with_coupon else None)
    email = render_email(template, ctx)
    assert isinstance(email, RenderedEmail)

    # subject: one non-empty line, no markup
    assert email.subject and email.subject == email.subject.strip()
    assert "\n" not in email.subject and "\r" not in email.subject
    assert not TAG.search(email.subject)

    # text part: plain text with the legal footer
    assert not TAG.search(email.text), f"HTML tag in text part of {template}"
    assert UNSUBSCRIBE in email.text
    assert SHOP["address"] in email.text

    # html part: a full document, CSS inlined, legal footer present
    html = email.html
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert 'style="' in html
    assert re.search(r'<td[^>]*class="content"[^>]*style="[^"]*padding', html), (
        "content cell styles not inlined"
    )
    assert re.search(r'<td[^>]*class="btn-cell"[^>]*style="[^"]*background-color', html), "button not styled"
    assert htmllib.escape(UNSUBSCRIBE, quote=True) in html
    assert htmllib.escape(SHOP["address"]) in html
    assert SHOP["name"] in html
    assert 'lang="en-GB"' in html

    for part in (email.subject, email.text, html):
        assert "None" not in part, f"'None' leaked into {template}"
        assert "Undefined" not in part

    if template in CART_REMINDERS:
        for item in CART_ROW["items"]:
            assert item["name"] in html and item["name"] in email.text
            assert f'src="{item["image_url"]}"' in html
            assert money(item["unit_price"], "EUR") in html
            assert money(item["unit_price"], "EUR") in email.text
        assert "€98.00" in html  # line total 2 x 49
        assert money(CART_ROW["cart_total"], "EUR") == "€117.50"
        assert "€117.50" in html and "€117.50" in email.text
        # button back to the cart, with utm, keeping the cart's token
        cart_link = utm(CART_ROW["cart_url"], "cart_abandonment", ctx["step"] + "-button")
        assert htmllib.escape(cart_link) in html
        assert "token=abc" in cart_link and "utm_campaign=cart_abandonment" in cart_link
        assert cart_link in email.text

    if template in REVIEW_LISTS:
        for item in REVIEW_ROW["items"]:
            assert item["name"] in html and item["name"] in email.text
            assert f'src="{item["image_url"]}"' in html
            assert item["review_url"] in html and item["review_url"] in email.text

    if template in {"win_back/email_1", "win_back/email_2"}:
        if with_coupon:
            for part in (html, email.text):
                assert "COMEBACK15" in part and "15%" in part and "30 April 2025" in part
        else:
            assert "COMEBACK15" not in html


def test_cart_reminders_escalate():
    subjects = [render_email(t, make_context(t)).subject for t in sorted(CART_REMINDERS)]
    assert len(set(subjects)) == 3
    assert "last chance" in subjects[-1].lower()
    last = render_email("cart_abandonment/reminder_3", make_context("cart_abandonment/reminder_3"))
    assert "last reminder" in last.text.lower()


@pytest.mark.parametrize("template", ["upsell/offer", "upsell/follow_up"])
def test_upsell_shows_the_difference_at_the_days_upgrade_price(template):
    """The context stores no difference: the email works it out from the cart price and the
    upgrade's price as the send filled it in, so a price changed since the run shows correctly."""
    row = copy.deepcopy(ROWS["upsell"])
    assert "price_difference" not in row
    row["upgrade"]["price"] = row["item"]["price"] + 7.25  # the shop's price on the day it is sent
    email = render_email(template, make_context(template, row=row))
    assert money(7.25) in email.text and money(7.25) in email.html
    assert money(row["upgrade"]["price"]) in email.text


def test_win_back_email_3_asks_to_stay_subscribed():
    email = render_email("win_back/email_3", make_context("win_back/email_3"))
    assert "still want to hear from us" in email.subject.lower()
    keep = f"{SHOP['base_url']}/preferences"
    assert keep in email.html and keep in email.text
    assert htmllib.escape(UNSUBSCRIBE) in email.html


def test_review_exits_with_and_without_rating():
    row = dict(REVIEW_ROW)
    email = render_email("review_request/thank_you", make_context("review_request/thank_you", row=row))
    assert "out of 5" not in email.text
    email = render_email(
        "review_request/thank_you", make_context("review_request/thank_you", row={**row, "rating": 5})
    )
    assert "5 out of 5" in email.text
    recovery = render_email(
        "review_request/service_recovery",
        make_context("review_request/service_recovery", row={**row, "rating": 1}),
    )
    assert SHOP["support_email"] in recovery.text and f"mailto:{SHOP['support_email']}" in recovery.html
    assert "sorry" in recovery.subject.lower()


def test_missing_first_name_reads_naturally():
    email = render_email(
        "cart_abandonment/reminder_1", make_context("cart_abandonment/reminder_1", first_name=None)
    )
    assert email.subject.startswith("You left")
    assert "Hi there" in email.text


@pytest.mark.parametrize(
    ("currency", "amount", "expected"),
    [
        ("EUR", 12.5, "€12.50"),
        ("USD", 1234.5, "$1,234.50"),
        ("GBP", "7", "£7.00"),
        ("BRL", 99.999, "R$100.00"),
        ("JPY", 1250, "¥1,250"),
        ("XYZ", 12.5, "12.50 XYZ"),
        ("eur", -3.456, "-€3.46"),
    ],
)
def test_money(currency, amount, expected):
    assert money(amount, currency) == expected
    env = get_environment()
    assert env.from_string("{{ v|money(c) }}").render(v=amount, c=currency) == expected


def test_money_defaults_to_the_context_currency():
    env = get_environment()
    assert env.from_string("{{ 12.5|money }}").render(currency="GBP") == "£12.50"
    assert env.from_string("{{ 12.5|money }}").render() == "€12.50"
    email = render_email(
        "cart_abandonment/reminder_1", make_context("cart_abandonment/reminder_1", currency="USD")
    )
    assert "$117.50" in email.html and "€" not in email.text


def test_utm_keeps_existing_parameters():
    url = utm(
        "https://shop.example.com/cart/1?token=abc&utm_source=old#top", "cart_abandonment", "reminder_1"
    )
    assert url == (
        "https://shop.example.com/cart/1?token=abc&utm_source=lifecycle&utm_medium=email"
        "&utm_campaign=cart_abandonment&utm_content=reminder_1#top"
    )
    assert utm("https://shop.example.com", "win_back", "email_1").startswith(
        "https://shop.example.com/?utm_source="
    )
    env = get_environment()
    rendered = env.from_string("{{ u|utm('j', 's') }}").render(u="https://x.example/p?a=1&b=2")
    assert (
        rendered
        == "https://x.example/p?a=1&b=2&utm_source=lifecycle&utm_medium=email&utm_campaign=j&utm_content=s"
    )


# ----------------------------------------------------------------- data is data, never code


class _Parsed(HTMLParser):
    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text: list[str] = []
        self.attrs: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(v for _, v in attrs if v)

    def handle_data(self, data):
        self.text.append(data)


def test_customer_data_is_escaped_in_html():
    ctx = make_context("cart_abandonment/reminder_1", first_name="<script>alert(1)</script>")
    ctx["row"]["items"][0]["name"] = 'Shirt "<b>bold</b>"'
    email = render_email("cart_abandonment/reminder_1", ctx)
    parsed = _Parsed(email.html)
    # no element came from the data: it is text (and a quoted alt attribute), never markup
    assert "script" not in parsed.tags and "b" not in parsed.tags
    assert "<script>" not in email.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in email.html
    assert any("<script>alert(1)</script>" in t for t in parsed.text)
    assert any('Shirt "<b>bold</b>"' in t for t in parsed.text)
    assert 'Shirt "<b>bold</b>"' in parsed.attrs  # alt text, safely quoted
    # plain text is not HTML: the value is shown as typed, not escaped
    assert "<script>alert(1)</script>" in email.text


def test_template_syntax_in_data_stays_literal():
    ctx = make_context("cart_abandonment/reminder_1", first_name="{{ 7*7 }}")
    ctx["row"]["items"][1]["name"] = "{% for x in range(3) %}boom{% endfor %}"
    email = render_email("cart_abandonment/reminder_1", ctx)
    assert email.subject.startswith("{{ 7*7 }}, you left")
    assert "{{ 7*7 }}" in email.text and "{{ 7*7 }}" in email.html
    assert "{% for x in range(3) %}boom{% endfor %}" in email.text
    assert "boomboom" not in email.text


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ row.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
    ],
)
def test_sandbox_blocks_unsafe_attribute_access(source):
    env = get_environment()
    with pytest.raises(SecurityError):
        env.from_string(source).render(row={}, cycler=object())


def test_sandbox_violation_in_a_template_file_names_the_file(tmp_path):
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil/step.subject.txt").write_text("{{ ''.__class__.__mro__ }}")
    (tmp_path / "evil/step.txt").write_text("x")
    (tmp_path / "evil/step.html").write_text("<p>x</p>")
    with pytest.raises(TemplateRenderError, match=r"evil/step\.subject\.txt") as info:
        render_email("evil/step", {"links": {}}, templates_dir=tmp_path)
    assert isinstance(info.value.__cause__, SecurityError)


def test_autoescape_by_extension():
    env = get_environment()
    assert env.autoescape("cart_abandonment/reminder_1.html") is True
    assert env.autoescape("cart_abandonment/reminder_1.txt") is False
    assert env.autoescape("cart_abandonment/reminder_1.subject.txt") is False
    ctx = make_context("cart_abandonment/reminder_1")
    ctx["shop"]["name"] = "Bits & <Bobs>"
    assert "Bits &amp; &lt;Bobs&gt;" in env.get_template("_layouts/email.html").render(ctx)
    assert "Bits & <Bobs>" in env.get_template("_layouts/email.txt").render(ctx)


def test_environment_is_cached_per_directory(tmp_path):
    assert get_environment() is get_environment(TEMPLATES_DIR)
    assert get_environment(tmp_path) is get_environment(str(tmp_path))
    assert get_environment(tmp_path) is not get_environment()


# ---------------------------------------------------------------------------- failing loudly


def test_missing_variable_names_the_template():
    ctx = make_context("cart_abandonment/reminder_1")
    del ctx["row"]["cart_url"]
    with pytest.raises(TemplateRenderError, match=r"cart_abandonment/reminder_1") as info:
        render_email("cart_abandonment/reminder_1", ctx)
    assert "cart_url" in str(info.value)
    assert info.value.template == "cart_abandonment/reminder_1"
    assert info.value.file == "cart_abandonment/reminder_1.txt" and info.value.line  # text renders first


def test_error_in_a_shared_layout_names_both_files():
    ctx = make_context("cart_abandonment/reminder_2")
    del ctx["row"]["items"][1]["image_url"]
    with pytest.raises(TemplateRenderError) as info:
        render_email("cart_abandonment/reminder_2", ctx)
    message = str(info.value)
    assert message.startswith("template cart_abandonment/reminder_2 (_layouts/components.")
    assert "image_url" in message and info.value.line


def test_typo_in_a_template_names_file_and_line(tmp_path):
    (tmp_path / "j").mkdir()
    (tmp_path / "j/s.subject.txt").write_text("{# sent never #}\nHello {{ customer.first_name }}")
    (tmp_path / "j/s.txt").write_text("line one\nline two {{ row.cart_ur }}\n")
    (tmp_path / "j/s.html").write_text("<p>{{ row.cart_url }}</p>")
    ctx = {"customer": {"first_name": "Ana"}, "row": {"cart_url": "https://x"}}
    with pytest.raises(TemplateRenderError) as info:
        render_email("j/s", ctx, templates_dir=tmp_path)
    message = str(info.value)
    assert "j/s.txt" in message and "line 2" in message and "cart_ur" in message
    assert info.value.file == "j/s.txt" and info.value.line == 2


def test_syntax_error_names_the_file(tmp_path):
    (tmp_path / "j").mkdir()
    (tmp_path / "j/s.subject.txt").write_text("Hi")
    (tmp_path / "j/s.txt").write_text("x")
    (tmp_path / "j/s.html").write_text("<p>\n{% if %}</p>")
    with pytest.raises(TemplateRenderError, match=r"template j/s \(j/s\.html, line 2\)"):
        render_email("j/s", {}, templates_dir=tmp_path)


def test_subject_must_be_one_line(tmp_path):
    (tmp_path / "j").mkdir()
    (tmp_path / "j/s.subject.txt").write_text("  Hello\nthere  ")
    (tmp_path / "j/s.txt").write_text("x")
    (tmp_path / "j/s.html").write_text("<p>x</p>")
    with pytest.raises(TemplateRenderError, match="one line"):
        render_email("j/s", {}, templates_dir=tmp_path)
    (tmp_path / "j/s.subject.txt").write_text("\n  Hello there  \n")
    assert render_email("j/s", {}, templates_dir=tmp_path).subject == "Hello there"


def test_template_files_and_missing_files(tmp_path):
    assert template_files("cart_abandonment/reminder_1") == [
        TEMPLATES_DIR / "cart_abandonment/reminder_1.subject.txt",
        TEMPLATES_DIR / "cart_abandonment/reminder_1.txt",
        TEMPLATES_DIR / "cart_abandonment/reminder_1.html",
    ]
    (tmp_path / "j").mkdir()
    (tmp_path / "j/s.html").write_text("<p>x</p>")
    assert missing_template_files("j/s", templates_dir=tmp_path) == [
        tmp_path / "j/s.subject.txt",
        tmp_path / "j/s.txt",
    ]
    assert len(missing_template_files("nope/never", templates_dir=tmp_path)) == 3
    with pytest.raises(MissingTemplateError, match=r"j/s.*s\.subject\.txt, s\.txt"):
        render_email("j/s", {}, templates_dir=tmp_path)
    (tmp_path / "j/s.subject.txt").write_text("Hi")
    (tmp_path / "j/s.txt").write_text("x")
    assert missing_template_files("j/s", templates_dir=tmp_path) == []
    assert available_templates(templates_dir=tmp_path) == ["j/s"]


def test_template_names_are_checked():
    with pytest.raises(ValueError, match="channel"):
        template_files("cart_abandonment/reminder_1", channel="pigeon")
    with pytest.raises(ValueError, match="invalid template name"):
        template_files("../secrets")


# ------------------------------------------------------------------- percent: 15%, never 15.0%


@pytest.mark.parametrize(
    ("value", "expected"),
    [(15, "15%"), (15.0, "15%"), (12.5, "12.5%"), (Decimal("10.00"), "10%"), (Decimal("12.50"), "12.5%"),
     ("20", "20%"), (0.1 + 0.2, "0.3%"), (None, ""), ("", "")],
)
def test_percent(value, expected):
    assert percent(value) == expected
    assert get_environment().from_string("{{ v|percent }}").render(v=value) == expected


@pytest.mark.parametrize("value", ["fifteen", float("nan"), Decimal("Infinity")])
def test_percent_refuses_what_is_not_a_number(value):
    with pytest.raises(ValueError, match="percent: .* is not a number"):
        percent(value)


def journey_templates(journey: str) -> dict[str, list[str]]:
    """The journey's templates per channel (a push or SMS step has its own files)."""
    return {channel: [t for t in available_templates(channel) if t.split("/")[0] == journey]
            for channel in ("email", "sms", "push")}


def render_everything(template: str, channel: str, ctx: dict) -> dict[str, str]:
    """Every part a customer sees of one template on one channel, by part name."""
    if channel == "email":
        email = render_email(template, ctx)
        return {"subject": email.subject, "text": email.text, "html": email.html}
    if channel == "sms":
        return {"sms": render_sms(template, ctx)}
    push = render_push(template, ctx)
    return {"push title": push["title"], "push body": push["body"]}


def rendered_samples(percent_off) -> list[tuple[str, str, str]]:
    """(template, part, text) for every template of every journey, rendered with a coupon."""
    out = []
    for journey in sorted(ROWS):
        for channel, templates in journey_templates(journey).items():
            for template in templates:
                ctx = make_context(template, coupon={**COUPON, "percent_off": percent_off})
                for part, text in render_everything(template, channel, ctx).items():
                    out.append((template, part, text))
    return out


JOURNEYS_WITH_A_COUPON = {"win_back", "birthday", "welcome", "referral", "just_because", "behaviour_discount",
                          "cart_abandonment"}


@pytest.mark.parametrize("journey", sorted(ROWS))
@pytest.mark.parametrize(
    ("percent_off", "shown"),
    [(15, "15%"), (15.0, "15%"), (Decimal("15.00"), "15%"), (12.5, "12.5%")],
    ids=["int", "float", "numeric", "fraction"],
)
def test_each_journey_shows_the_percent_as_people_write_it(journey, percent_off, shown):
    """send.py passes numeric(5, 2) coupons as floats: 15.0 must still read '15%'."""
    showing_the_code = 0
    for channel, templates in journey_templates(journey).items():
        for template in templates:
            ctx = make_context(template, coupon={**COUPON, "percent_off": percent_off})
            for part, text in render_everything(template, channel, ctx).items():
                assert not re.search(r"\d\.0+%", text), f"{template} {part}: {text!r}"
                if COUPON["code"] in text and part != "html":
                    showing_the_code += 1
                    assert shown in text, f"{template} {part} shows the code but not {shown}"
    assert (showing_the_code > 0) == (journey in JOURNEYS_WITH_A_COUPON), journey


def test_no_rendered_sample_says_point_zero_percent():
    """Every sample on every channel (subject, text, html, SMS, push), with the float send.py passes."""
    samples = rendered_samples(15.0)
    assert {part for _, part, _ in samples} == {"subject", "text", "html", "sms", "push title", "push body"}
    bad = [(template, part, m.group()) for template, part, text in samples for m in re.finditer(r".{0,30}\d\.0%", text)]
    assert bad == []
    assert any("15%" in text for _, part, text in samples if part == "sms")


# ------------------------------------------------- CSS inlined once per template shape (the send path)
# render_email inlines each message's CSS (css_inline); the send task's render_email_for_send
# inlines each shape of a template once and fills in the values (lifecycle.inlining). Compared
# here byte for byte: the same string, not merely the same after normalising whitespace.

HOSTILE = 'Zoë "<b>&amp; \'x\'</b>" &copy\xa0&not in; <'  # markup, references, a bare "&", a no-break space
PER_MESSAGE = {  # shipped templates whose CSS the send path still inlines message by message, and why
    "seasonal_offer/offer": "the result of a call is used, not printed",  # a macro's output in a button label
}


def hostile_context(template: str, coupon=None) -> dict:
    ctx = make_context(template, coupon=coupon, first_name=HOSTILE)
    for item in ctx["row"].get("items", [])[:1]:
        item["name"] = HOSTILE
    return ctx


def inlined_by_shape(render) -> Counter:
    """How the send path inlined the CSS of the messages `render()` rendered."""
    before = Counter(inlining.counts)
    render()
    return Counter(inlining.counts) - before


@pytest.mark.parametrize("template", sorted(EXPECTED_TEMPLATES))
def test_the_send_path_inlines_css_once_per_shape_into_the_same_html(template: str):
    contexts = [make_context(template), make_context(template, coupon=COUPON), hostile_context(template, COUPON),
                make_context(template, first_name="")]

    def compare():
        for ctx in contexts:
            assert render_email_for_send(template, ctx) == render_email(template, ctx)

    used = inlined_by_shape(compare)
    if template in PER_MESSAGE:
        assert PER_MESSAGE[template] in css_inlining(template) and used == {"per message": len(contexts)}
    else:
        assert css_inlining(template) is None
        assert used["per message"] == 0 and used["new shape"] + used["known shape"] == len(contexts), used


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first_name=st.text(max_size=12), item=st.text(max_size=12), code=st.text(min_size=1, max_size=8))
def test_any_values_give_the_same_html_either_way(first_name, item, code):
    """Values of any characters (the hostile ones: quotes, "&", "<", no-break spaces, CR and NUL,
    which the parser rewrites and so are inlined per message)."""
    template = "cart_abandonment/reminder_3"
    ctx = make_context(template, coupon={**COUPON, "code": code}, first_name=first_name)
    ctx["row"]["items"][1]["name"] = item
    assert outcome(render_email_for_send, template, ctx) == outcome(render_email, template, ctx)


def outcome(render, template: str, ctx: dict):
    """The rendered email, or the error (a first name with a line break makes a two-line subject)."""
    try:
        return render(template, ctx)
    except TemplateRenderError as exc:
        return type(exc), str(exc)


def test_a_value_the_parser_rewrites_is_inlined_per_message():
    ctx = make_context("cart_abandonment/reminder_1")
    ctx["row"]["items"][0]["name"] = "Linen\r\nShirt"
    used = inlined_by_shape(lambda: render_email_for_send("cart_abandonment/reminder_1", ctx))
    assert used == {"per message": 1}
    assert render_email_for_send("cart_abandonment/reminder_1", ctx) == render_email("cart_abandonment/reminder_1", ctx)


STYLE = "<style>.a { color: red; } p { margin: 0; }</style>"
# (template HTML, the value printed, how the send path must inline it: a reason or "per shape")
INLINING_CASES = {
    "plain": (STYLE + '<p class="a">Hi {{ v }}</p><a href="https://x/?q={{ v }}">{{ v }}</a>', "A&B", "per shape"),
    "a class from a value": (STYLE + '<p class="{{ v }}">x</p>', "a", "shape"),
    "text out of a table": (STYLE + "<table>{{ v }}<tr><td class=\"a\">x</td></tr></table>", "  ", "shape"),
    "an :empty rule": ("<style>p:empty { display: none; }</style><p>{{ v }}</p>", "", "shape"),
    "an attribute selector": ('<style>a[href^="https"] { color: red; }</style><a href="{{ v }}">x</a>',
                              "https://x", "shape"),
    "an unquoted attribute": (STYLE + "<a href={{ v }}>x</a>", "x class=a", "shape"),
    "a reference the value completes": (STYLE + "<p>&not{{ v }}</p>", "in;", "shape"),
    "a tag the value completes": (STYLE + "<p><{{ v }}</p>", "b", "shape"),
    "a filter block": (STYLE + "{% filter upper %}<p>{{ v }}</p>{% endfilter %}", "x", "a {% filter %} block"),
    "a macro's output inspected": (STYLE + "{% macro m() %}<b>{{ v }}</b>{% endmacro %}"
                                   "{% if m()|length > 10 %}<p class=\"a\">long</p>{% endif %}", "x",
                                   "the result of a call is used"),
}


@pytest.mark.parametrize("case", sorted(INLINING_CASES))
def test_the_send_path_inlines_per_message_wherever_a_shape_could_differ(case: str, tmp_path):
    """Each case where a value could change what the CSS matches or how the parser places it
    falls back to inlining the message itself; the HTML is the same string either way."""
    source, value, how = INLINING_CASES[case]
    (tmp_path / "j").mkdir()
    (tmp_path / "j/s.subject.txt").write_text("Hi")
    (tmp_path / "j/s.txt").write_text("x")
    (tmp_path / "j/s.html").write_text(source)
    ctx = {"v": value}
    used = inlined_by_shape(lambda: render_email_for_send("j/s", ctx, templates_dir=tmp_path))
    assert render_email_for_send("j/s", ctx, templates_dir=tmp_path) == render_email("j/s", ctx, templates_dir=tmp_path)
    reason = css_inlining("j/s", tmp_path)
    if how == "per shape":
        assert reason is None and used == {"new shape": 1}
    elif how == "shape":  # the template is fine, this shape of it is not
        assert reason is None and used == {"per message": 1}
    else:
        assert how in reason and used == {"per message": 1}
