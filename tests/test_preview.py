"""`lifecycle preview` and what dry runs record (issue 10 item 8), on the embedded demo shop:
the preview renders one customer's messages with the sender's own code (an .eml parsed back
with the email package, the SMS text, the push JSON) and writes nothing to `lifecycle`; a dry
run stores each message's rendered subject and body hash, and `report --mode dry` shows them."""

from __future__ import annotations

import json
from datetime import timedelta
from email import policy
from email.parser import BytesParser

import pytest
import sqlalchemy as sa
from conftest import LIFECYCLE_TABLES, reset_lifecycle

from lifecycle.channels.email import EmailChannel
from lifecycle.cli import main
from lifecycle.config import SEGMENTS_DIR
from lifecycle.preview import NotSelected, preview, preview_interval
from lifecycle.replay import run_interval
from lifecycle.spec import load_spec
from lifecycle_demo.sinks.smtp_server import RecordingSMTPServer

WIN_BACK = load_spec(SEGMENTS_DIR / "win_back.sql")


def url_of(engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def table_counts(engine) -> dict[str, int]:
    with engine.connect() as conn:
        counts = {t: conn.execute(sa.text(f"SELECT count(*) FROM lifecycle.{t}")).scalar_one() for t in LIFECYCLE_TABLES}
        counts["stage tables"] = conn.execute(sa.text(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'lifecycle_stage'")).scalar_one()
    return counts


def selected_customers(engine, as_of) -> list[str]:
    """The customers win_back selects for the interval ending at as_of, in the preview's order."""
    from lifecycle.preview import selected_rows
    from lifecycle.run_context import RunContext

    start, end = preview_interval(WIN_BACK, as_of)
    rows = selected_rows(engine, WIN_BACK, RunContext("win_back", "t", "dry", start, end))
    return [r._customer for r in rows]


def contact(engine, customer_id: str) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT email, first_name FROM lifecycle.contacts WHERE customer_id::text = :c"),
                                 {"c": customer_id}).mappings().one())


def preview_cli(engine, tmp_path, capsys, *args) -> tuple[int, str, str]:
    code = main(["preview", *args, "--out", str(tmp_path), "--warehouse-url", url_of(engine)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_preview_writes_the_first_selected_customers_emails_and_nothing_to_lifecycle(shop_db, tmp_path, capsys):
    engine, _planted, anchor = shop_db
    reset_lifecycle(engine)
    first = selected_customers(engine, anchor)[0]
    person = contact(engine, first)
    before = table_counts(engine)

    code, out, err = preview_cli(engine, tmp_path, capsys, "win_back", "--as-of", anchor.isoformat())

    assert code == 0, err
    assert table_counts(engine) == before  # no run, enrollment, coupon, message or staging table
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["email_1.email.eml", "email_2.email.eml", "email_3.email.eml", "thank_you.email.eml"]
    assert f"customer {first}," in out and all(f"wrote {tmp_path / n}" in out for n in names)
    mail = BytesParser(policy=policy.default).parse((tmp_path / "email_1.email.eml").open("rb"))
    assert mail["To"] == person["email"]
    greeting = f", {person['first_name']}" if person["first_name"] else ""
    assert mail["Subject"] == f"We miss you{greeting}: 15% off your next order"  # the coupon step's subject
    assert mail["X-Lifecycle-Step"] == "email_1" and mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text = mail.get_body(("plain",)).get_content()
    assert "WBPREVIEW" in text  # a sample code: the preview issues no coupon
    assert mail.get_body(("html",)).get_content().lstrip().lower().startswith(("<!doctype", "<html"))


def test_preview_of_one_step_for_a_given_customer(shop_db, tmp_path, capsys):
    engine, _planted, anchor = shop_db
    chosen = selected_customers(engine, anchor)[-1]

    code, out, err = preview_cli(engine, tmp_path, capsys, "win_back", "--as-of", anchor.isoformat(),
                                 "--customer", chosen, "--step", "email_2")

    assert code == 0, err
    assert [p.name for p in tmp_path.iterdir()] == ["email_2.email.eml"]
    mail = BytesParser(policy=policy.default).parse((tmp_path / "email_2.email.eml").open("rb"))
    assert mail["To"] == contact(engine, chosen)["email"] and f"customer {chosen}," in out


def test_preview_of_a_customer_the_segment_does_not_select_says_so_and_names_some_who_are(shop_db, tmp_path, capsys):
    engine, _planted, anchor = shop_db
    selected = selected_customers(engine, anchor)
    with engine.connect() as conn:
        outsider = conn.execute(sa.text("SELECT min(customer_id)::text FROM lifecycle.contacts "
                                        "WHERE NOT (customer_id::text = ANY(:s))"), {"s": selected}).scalar_one()

    code, out, err = preview_cli(engine, tmp_path, capsys, "win_back", "--as-of", anchor.isoformat(),
                                 "--customer", outsider)

    assert code == 1 and out == ""
    assert f"customer {outsider} is not selected in the interval" in err
    assert f"{len(set(selected))} customer(s) are, e.g. {', '.join(list(dict.fromkeys(selected))[:5])}" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("journey", ["birthday", "browse_abandonment"])  # SMS; push with email fallback
def test_preview_renders_sms_text_and_push_json(shop_db, tmp_path, journey):
    engine, _planted, anchor = shop_db
    spec = load_spec(SEGMENTS_DIR / f"{journey}.sql")
    as_of, result = anchor, None
    for _ in range(60):  # the latest interval up to the anchor in which the segment selects someone
        try:
            result = preview(engine, spec, tmp_path, as_of=as_of)
            break
        except NotSelected:
            as_of = preview_interval(spec, as_of)[0] - timedelta(microseconds=1)
    assert result is not None, f"{journey} selects nobody in 60 intervals before the anchor"
    expected = {"email": ".eml", "sms": ".txt", "push": ".json"}
    assert {p.suffix for p in result.written} == {expected[c] for c in spec.channels}
    for path in result.written:
        if path.suffix == ".json":
            payload = json.loads(path.read_text())
            assert set(payload) == {"title", "body", "url"}
            if journey == "browse_abandonment":  # the context names the product by reference: the preview
                with engine.connect() as conn:   # fills in its card, as a send would
                    names = conn.execute(sa.text("SELECT name FROM shop.products")).scalars().all()
                assert any(payload["body"].startswith(f"{name} is still available") for name in names), payload
        elif path.suffix == ".txt":
            assert path.read_text().strip() and "\n" not in path.read_text().strip()  # one line of text
        else:
            assert BytesParser(policy=policy.default).parse(path.open("rb"))["Subject"]


def test_a_dry_run_records_subject_and_body_hash_and_the_dry_report_shows_them(shop_db, tmp_path, capsys):
    engine, _planted, anchor = shop_db
    reset_lifecycle(engine)
    with RecordingSMTPServer() as smtp:
        run_interval(engine, WIN_BACK, anchor - timedelta(days=1), anchor,
                     lambda name: EmailChannel("127.0.0.1", smtp.port), mode="dry")
        assert smtp.messages == []  # a dry run delivers nothing
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT m.customer_id::text AS customer_id, m.step, m.dry_run_subject, m.dry_run_body_sha256 "
            "FROM lifecycle.messages m WHERE m.status = 'dry_run' ORDER BY m.message_id")).mappings().all()
    assert rows, "win_back should plan email_1 for someone on the anchor day"
    for row in rows:
        first_name = contact(engine, row["customer_id"])["first_name"]
        greeting = f", {first_name}" if first_name else ""
        assert row["dry_run_subject"] == f"We miss you{greeting}: 15% off your next order"
        assert len(row["dry_run_body_sha256"]) == 64 and int(row["dry_run_body_sha256"], 16) >= 0

    assert main(["report", "--mode", "dry", "--warehouse-url", url_of(engine)]) == 0
    out = capsys.readouterr().out
    assert "What the dry runs would have sent" in out
    line = next(x for x in out.splitlines() if x.startswith("win_back") and "email_1" in x)
    subjects = {r["dry_run_subject"] for r in rows}
    bodies = {r["dry_run_body_sha256"] for r in rows}
    assert line.split()[:6] == ["win_back", "email_1", "email", str(len(rows)), str(len(subjects)), str(len(bodies))]
    assert line.endswith(rows[0]["dry_run_subject"])


def test_the_interval_is_the_one_ending_at_the_latest_tick_at_or_before_as_of(shop_db, tmp_path, capsys):
    engine, _planted, anchor = shop_db  # win_back is daily at midnight UTC; the anchor is a midnight
    assert preview_interval(WIN_BACK, anchor) == (anchor - timedelta(days=1), anchor)
    assert preview_interval(WIN_BACK, anchor + timedelta(hours=15)) == (anchor - timedelta(days=1), anchor)

    code, out, err = preview_cli(engine, tmp_path, capsys, "win_back", "--as-of", "2026-11-20T15:00",
                                 "--step", "email_9")

    assert code == 1 and out == "" and not any(tmp_path.iterdir())
    assert err == ("lifecycle preview: win_back: no message step 'email_9'; "
                   "its steps are email_1, email_2, email_3, thank_you\n")
