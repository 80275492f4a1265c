"""A/B variants of a step (`variants:` in the segment header, lifecycle/variants.py): the header is
checked with clear errors, the assignment is a stable hash of (journey, step, customer) computed
in the plan's INSERT (the same variant in a re-run and a backfill, shares that follow the weights),
the chosen variant's subject goes out, and `winner: auto` switches new messages to the winner
once the fixed-horizon rule is met, recorded in lifecycle.ab_decisions."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy as sa
from conftest import reset_lifecycle
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from scipy import stats

from lifecycle import analytics, schema, variants
from lifecycle.channels.email import EmailChannel
from lifecycle.channels.push import PushChannel
from lifecycle.config import SEGMENTS_DIR
from lifecycle.replay import run_interval
from lifecycle.spec import SpecError, load_spec

HEADER = """/* ---
journey: {name}
schedule: daily
entry_key: cart_id
entered_at: entered_at
steps:
  - name: reminder_1
    after: 1h
    channel: {channel}
    template: {template}
{variants}
--- */
SELECT customer_id, cart_id, entered_at, email FROM public.carts WHERE entered_at < :as_of
"""


def header(tmp_path, variants_yaml: str, channel="email", template="cart_abandonment/reminder_1", name="ab_probe"):
    path = tmp_path / f"{name}.sql"
    path.write_text(HEADER.format(name=name, channel=channel, template=template, variants=variants_yaml))
    return path


def problems(tmp_path, variants_yaml: str, **kw) -> str:
    with pytest.raises(SpecError) as err:
        load_spec(header(tmp_path, variants_yaml, **kw))
    return str(err.value)


def test_variants_and_the_test_settings_are_read(tmp_path):
    spec = load_spec(header(tmp_path, """    variants:
      - {name: a, weight: 70}
      - {name: b, weight: 30, subject: "{{ customer.first_name }}, still there?"}
    ab_test: {mde: 0.03, baseline_rate: 0.1, winner: auto, metric: clicked}"""))
    step = spec.step("reminder_1")
    assert step.variants == (variants.Variant("a", 70.0), variants.Variant("b", 30.0, None,
                                                                           "{{ customer.first_name }}, still there?"))
    assert step.ab_test == variants.ABTest(metric="clicked", baseline_rate=0.1, mde=0.03, winner="auto")
    assert variants.variant_binds(spec, "reminder_1") == {"variant_names": ["a", "b"], "variant_weights": [70.0, 30.0]}
    assert variants.variant_binds(spec, "thank_you") == {"variant_names": None, "variant_weights": None}


@pytest.mark.parametrize(("yaml_text", "expected"), [
    ("    variants: {a: 1}", "steps[0] (reminder_1).variants: must be a list of 2 to 5 variants"),
    ("    variants:\n      - {name: a}", "steps[0] (reminder_1).variants: must be a list of 2 to 5 variants"),
    ("    variants:\n      - {name: a}\n      - {name: b, weight: 0, subject: x}",
     "steps[0] (reminder_1).variants[1] (b).weight: a number above 0 (the share is weight / sum of weights), got 0"),
    ("    variants:\n      - {name: a}\n      - {name: b, wieght: 2, subject: x}",
     "steps[0] (reminder_1).variants[1]: unknown key 'wieght' (did you mean 'weight'?)"),
    ("    variants:\n      - {name: a}\n      - {name: a, subject: x}",
     "steps[0] (reminder_1).variants: name 'a' is used twice"),
    ("    variants:\n      - {name: a}\n      - {name: B, subject: x}",
     "steps[0] (reminder_1).variants[1].name: required, lower_snake_case (e.g. a, b, short_subject), got 'B'"),
    ("    variants:\n      - {name: a}\n      - {name: b}",
     "steps[0] (reminder_1).variants: a and b send the same message (give one a template: or a subject: of its own)"),
    ("    variants:\n      - {name: a}\n      - {name: b, subject: '{{ customer.first_name'}",
     "steps[0] (reminder_1).variants[1] (b).subject: unexpected end of template"),
    ("    variants:\n      - {name: a}\n      - {name: b, template: cart_abandonment/nope}",
     "steps[0] (reminder_1).variants[1] (b).template: 'cart_abandonment/nope' is missing"),
    ("    ab_test: {winner: auto}", "steps[0] (reminder_1).ab_test: only a step with variants: has an A/B test"),
    ("    variants:\n      - {name: a}\n      - {name: b, subject: x}\n    ab_test: {mde: 0.99}",
     "steps[0] (reminder_1).ab_test.mde: the smallest difference in the rate worth detecting, a number above 0 "
     "and below 0.95 (1 - baseline_rate), e.g. 0.02 for 2 points, got 0.99"),
    ("    variants:\n      - {name: a}\n      - {name: b, subject: x}\n    ab_test: {winner: yes, metric: opens}",
     "steps[0] (reminder_1).ab_test.metric: converted or clicked, got 'opens'; "
     "steps[0] (reminder_1).ab_test.winner: auto (switch new sends to the winner) or manual, got True"),
])
def test_bad_variants_are_named(tmp_path, yaml_text, expected):
    assert expected in problems(tmp_path, yaml_text)


def test_a_subject_needs_an_email_step(tmp_path):
    found = problems(tmp_path, "    variants:\n      - {name: a}\n      - {name: b, subject: Hi}",
                     channel="sms", template="birthday/sms")
    assert ("steps[0] (reminder_1).variants[1] (b).subject: only email steps have a subject (this step: sms); "
            "use template: for other channels") in found


# ------------------------------------------------------------------------------- assignment

def python_bucket(journey: str, step: str, customer: str) -> float:
    """The assignment's hash, computed independently: 52 bits of md5 as a fraction of 2^52."""
    return int(hashlib.md5(f"{journey}:{step}:{customer}".encode()).hexdigest()[:13], 16) / 2 ** 52


@pytest.fixture()
def warehouse(scratch_engine):
    schema.create_shop_schema(scratch_engine)
    schema.migrate(scratch_engine)
    return scratch_engine


def test_assignment_follows_the_weights_on_10k_customers(warehouse):
    names, weights = ["a", "b", "c"], [60.0, 30.0, 10.0]
    with warehouse.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT g::text AS customer_id, lifecycle.variant_bucket('cart', 'reminder_1', g::text) AS bucket, "
            "lifecycle.pick_variant('cart', 'reminder_1', g::text, :n, :w) AS variant "
            "FROM generate_series(1, 10000) g"), {"n": names, "w": weights}).all()
    edges = [0.6, 0.9, 1.0]
    for r in rows[:200]:  # the SQL hash is the documented one, and the variant the bucket's share
        assert r.bucket == pytest.approx(python_bucket("cart", "reminder_1", r.customer_id), abs=1e-15)
        assert r.variant == names[next(i for i, e in enumerate(edges) if r.bucket < e)]
    counts = Counter(r.variant for r in rows)
    # chi-square goodness of fit against the weights (the hash is fixed: so is the p-value)
    p = stats.chisquare([counts[n] for n in names], [10000 * w / 100 for w in weights]).pvalue
    assert p > 0.01, counts
    assert all(abs(counts[n] - 100 * w) < 4 * (10000 * w / 100 * (1 - w / 100)) ** 0.5 for n, w in zip(names, weights, strict=True))
    # another step of the same journey draws independently (not the same split)
    with warehouse.connect() as conn:
        other = conn.execute(sa.text(
            "SELECT lifecycle.pick_variant('cart', 'reminder_2', g::text, :n, :w) "
            "FROM generate_series(1, 10000) g"), {"n": names, "w": weights}).scalars().all()
    same = sum(1 for r, o in zip(rows, other, strict=True) if r.variant == o)
    assert abs(same - 10000 * (0.36 + 0.09 + 0.01)) < 300


# ------------------------------------------------------------------- through plan and send

CART = load_spec(SEGMENTS_DIR / "cart_abandonment.sql")
SUBJECT_B = "Variant B: {{ customer.first_name or 'friend' }}, your cart misses you"


def with_variants(spec, ab_test=None, lateness=timedelta(hours=6)):
    first = dataclasses.replace(
        spec.steps[0], max_lateness=lateness,
        variants=(variants.Variant("a", 1.0), variants.Variant("b", 1.0, None, SUBJECT_B)),
        ab_test=ab_test or variants.ABTest())
    return dataclasses.replace(spec, steps=(first, *spec.steps[1:]))


def run_and_send(engine, spec, end, server, run_id=None):
    """The hour ending at `end`, sent at `end`, as lifecycle.replay runs it."""
    run_interval(engine, spec, end - timedelta(hours=1), end, lambda name: EmailChannel("127.0.0.1", server.port),
                 run_id=run_id or f"{spec.journey}-{end:%Y%m%d%H}", clock=lambda: end)


def step_messages(engine, journey, step="reminder_1"):
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT message_id, customer_id, variant, status, idempotency_key FROM lifecycle.messages "
            "WHERE journey = :j AND step = :s ORDER BY message_id"), {"j": journey, "s": step}).all()


pytestmark_shop = pytest.mark.parametrize("shop_db", ["embedded"], indirect=True)


@pytestmark_shop
def test_the_variant_is_stored_stable_and_its_subject_is_sent(shop_db, smtp_server):
    engine, _, anchor = shop_db
    reset_lifecycle(engine)
    spec = with_variants(CART)
    run_and_send(engine, spec, anchor, smtp_server)
    first = step_messages(engine, spec.journey)
    assert len(first) > 10 and {m.variant for m in first} == {"a", "b"}
    for m in first:  # the documented hash decides, customer by customer
        assert m.variant == ("a" if python_bucket(spec.journey, "reminder_1", m.customer_id) < 0.5 else "b")

    # a re-run of the interval (another run id) and a backfill of an earlier one plan nothing new
    # for these messages and keep every variant
    run_and_send(engine, spec, anchor, smtp_server, run_id="rerun")
    run_and_send(engine, spec, anchor - timedelta(hours=5), smtp_server, run_id="backfill")
    again = {m.message_id: m.variant for m in step_messages(engine, spec.journey)}
    assert {m.message_id: m.variant for m in first}.items() <= again.items()
    for m in step_messages(engine, spec.journey):  # the backfill's own new messages: same rule
        assert m.variant == ("a" if python_bucket(spec.journey, "reminder_1", m.customer_id) < 0.5 else "b")

    # what went out: variant b's subject line from the header, variant a the template's own
    with engine.connect() as conn:
        by_address = dict(conn.execute(sa.text(
            "SELECT c.email, m.variant FROM lifecycle.messages m JOIN shop.customers c "
            "ON c.customer_id::text = m.customer_id WHERE m.journey = :j AND m.step = 'reminder_1' "
            "AND m.status = 'sent'"), {"j": spec.journey}).all())
    subjects = {}
    for envelope in smtp_server.messages:
        parsed = envelope.message()
        if parsed["X-Lifecycle-Step"] == "reminder_1":
            subjects[envelope.rcpt_tos[0]] = str(parsed["Subject"])
    assert subjects and set(subjects) == set(by_address)
    for address, subject in subjects.items():
        assert subject.startswith("Variant B: ") == (by_address[address] == "b"), (address, subject)


@pytestmark_shop
def test_winner_auto_switches_new_messages_once_the_rule_is_met(shop_db, smtp_server):
    engine, _, anchor = shop_db
    reset_lifecycle(engine)
    # a tiny test (large MDE): the horizon is a few sends per variant
    spec = with_variants(CART, variants.ABTest(metric="converted", baseline_rate=0.1, mde=0.85, winner="auto"),
                         lateness=timedelta(days=7))
    spec = dataclasses.replace(spec, complete_after=timedelta(hours=1))
    run_and_send(engine, spec, anchor - timedelta(hours=3), smtp_server)
    sent = [m for m in step_messages(engine, spec.journey) if m.status == "sent"]
    needed = analytics.required_n(0.1, 0.85)
    by = {v: [m for m in sent if m.variant == v] for v in ("a", "b")}
    assert all(len(g) >= needed for g in by.values()), {v: len(g) for v, g in by.items()}
    # plant the outcome: every customer of variant b converted after the send, none of a
    with engine.begin() as conn:
        for m in by["b"][:needed]:
            conn.execute(sa.text(
                "INSERT INTO lifecycle.conversions (enrollment_id, journey, mode, customer_id, condition, revenue, "
                "converted_at) SELECT enrollment_id, journey, mode, customer_id, 'planted', 10, :at "
                "FROM lifecycle.messages WHERE message_id = :id"), {"id": m.message_id, "at": anchor - timedelta(hours=2)})
    # the next run decides (the horizon's window is over) and new messages all get b
    run_and_send(engine, spec, anchor, smtp_server)
    with engine.connect() as conn:
        decision = conn.execute(sa.text("SELECT * FROM lifecycle.ab_decisions WHERE journey = :j"),
                                {"j": spec.journey}).one()
        decided_at = decision.decided_at
        later = conn.execute(sa.text(
            "SELECT variant FROM lifecycle.messages WHERE journey = :j AND step = 'reminder_1' "
            "AND created_at > :t"), {"j": spec.journey, "t": decided_at}).scalars().all()
    assert decision.winner == "b" and decision.decision == "winner: b" and decision.step == "reminder_1"
    assert decision.rule.startswith(f"fixed horizon: {needed} sends per variant")
    stats_ = decision.stats if isinstance(decision.stats, dict) else json.loads(decision.stats)
    assert [v["variant"] for v in stats_["variants"]] == ["a", "b"]
    assert [v["n"] for v in stats_["variants"]] == [needed, needed]
    assert [v["converted"] for v in stats_["variants"]][1] >= needed
    assert later and set(later) == {"b"}


def test_for_row_swaps_template_and_subject_only_for_known_variants():
    spec = with_variants(CART)

    class Row:
        step, template, customer_id = "reminder_1", "cart_abandonment/reminder_1", "1"

    row = Row()
    row.variant = "b"
    swapped = variants.for_row(spec, row)
    assert swapped.variant_subject == SUBJECT_B and swapped.template == row.template and swapped.customer_id == "1"
    row.variant = "gone"  # a variant removed from the file: the step's own files
    assert variants.for_row(spec, row) is row
    row.variant = None
    assert variants.for_row(spec, row) is row



# ------------------------------------------------------------------------------- fallbacks

PUSH_FIRST = """/* ---
journey: ab_fallback
schedule: hourly
entry_key: cart_id
entered_at: cart_updated_at
max_lateness: 7d
params: {lookback_hours: 48, wait_hours: 1}
steps:
  - name: reminder_1
    after: 1h
    channel: [push, email]
    template: cart_abandonment/reminder_1
    variants:
      - {name: a}
      - {name: b, template: cart_abandonment/reminder_1_b}
--- */
"""


@pytestmark_shop
def test_a_fallback_to_the_next_channel_keeps_its_variant(shop_db, smtp_server, templates, tmp_path):
    """A push whose subscription is gone falls back to email (send.plan_fallback): the email is the
    same message of the A/B test, so it carries the push's variant, goes out with that variant's
    template, and the funnel counts it in that variant (no row without a variant)."""
    from lifecycle_demo.sinks.push_server import PushServer, demo_key_lookup

    engine, _, anchor = shop_db
    reset_lifecycle(engine)
    for source in (templates / "cart_abandonment").glob("reminder_1.*"):  # variant b: its own files
        text = source.read_text()
        if source.name.endswith(("subject.txt", "push-title.txt")):
            text = "Variant B: " + text
        (source.parent / source.name.replace("reminder_1.", "reminder_1_b.")).write_text(text)
    (tmp_path / "ab_fallback.sql").write_text(
        PUSH_FIRST + (SEGMENTS_DIR / "cart_abandonment.sql").read_text().split("--- */", 1)[1])
    spec = load_spec(tmp_path / "ab_fallback.sql", templates_dir=templates)
    with PushServer(key_lookup=demo_key_lookup(engine, seed=11)) as push:
        with engine.begin() as conn:  # every subscription, routed to the local push service, is gone
            conn.execute(sa.text("UPDATE shop.push_subscriptions SET revoked_at = NULL, "
                                 "endpoint = :origin || '/push/' || regexp_replace(endpoint, '^.*/', '')"),
                         {"origin": push.origin})
            push.gone.update(conn.execute(sa.text(
                "SELECT regexp_replace(endpoint, '^.*/', '') FROM shop.push_subscriptions")).scalars())
        vapid = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
        channels = {"push": lambda: PushChannel(vapid, "mailto:ops@shop.example.com"),
                    "email": lambda: EmailChannel("127.0.0.1", smtp_server.port)}
        for end in (anchor - timedelta(hours=2), anchor - timedelta(hours=1), anchor):  # the last sends fallbacks
            run_interval(engine, spec, end - timedelta(hours=1), end, lambda name: channels[name](),
                         run_id=f"ab-fallback-{end:%H}", clock=lambda end=end: end)

    with engine.connect() as conn:
        fallbacks = conn.execute(sa.text(
            "SELECT f.variant, o.variant AS push_variant, f.status, c.email FROM lifecycle.messages f "
            "JOIN lifecycle.messages o ON o.message_id = f.fallback_of "
            "JOIN shop.customers c ON c.customer_id::text = f.customer_id "
            "WHERE f.journey = 'ab_fallback' AND o.channel = 'push' AND o.status = 'failed'")).all()
        funnel = [r for r in analytics.funnel(conn, since=anchor - timedelta(days=3), until=anchor,
                                              journey="ab_fallback") if r["step"] == "reminder_1"]
    assert {f.push_variant for f in fallbacks} == {"a", "b"}, fallbacks
    assert all(f.variant == f.push_variant for f in fallbacks)
    subjects = {m.rcpt_tos[0]: str(m.message()["Subject"]) for m in smtp_server.messages
                if m.message()["X-Lifecycle-Journey"] == "ab_fallback"}
    for f in fallbacks:
        if f.status == "sent":
            assert subjects[f.email].startswith("Variant B: ") == (f.variant == "b"), (f, subjects[f.email])
    sent = Counter(f.variant for f in fallbacks if f.status == "sent")
    assert sent["a"] and sent["b"]
    # the funnel: every email of the step in a variant's row, the fallbacks among them
    with engine.connect() as conn:
        emails_sent = conn.execute(sa.text("SELECT count(*) FROM lifecycle.messages WHERE journey = 'ab_fallback' "
                                           "AND step = 'reminder_1' AND status = 'sent'")).scalar_one()
    assert sorted(r["variant"] for r in funnel) == ["a", "b"]
    assert sum(r["delivered"] for r in funnel) == emails_sent
    assert all(r["delivered"] >= sent[r["variant"]] for r in funnel)
