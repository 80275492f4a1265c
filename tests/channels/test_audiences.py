"""Meta custom audiences: hashing, the client, the local Graph server and sync_audience.

Real PostgreSQL (a scratch database per test) and real HTTP to the local server
(lifecycle_demo.sinks.meta_server) on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import httpx
import pytest
import sqlalchemy as sa

from lifecycle import schema
from lifecycle.audiences import (
    AudienceAPIError,
    MetaAudienceClient,
    hash_email,
    hash_phone,
    normalise_phone,
    sync_audience,
)
from lifecycle_demo.sinks.meta_server import MetaAudienceServer

TOKEN = "EAAB-test-token"
AUDIENCE = "23850000000000001"
JOURNEY = "cart_abandonment"
T0 = datetime(2026, 11, 20, tzinfo=UTC)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture()
def db(scratch_engine):
    schema.create_shop_schema(scratch_engine)
    schema.migrate(scratch_engine)
    return scratch_engine


@pytest.fixture()
def meta():
    with MetaAudienceServer(access_token=TOKEN) as server:
        yield server


def client_for(server: MetaAudienceServer, token: str = TOKEN, **kw) -> MetaAudienceClient:
    kw.setdefault("backoff", 0.01)
    return MetaAudienceClient(server.base_url, "v21.0", token, 10.0, **kw)


def add_customer(conn, cid: int, email: str | None, phone: str | None = None, country: str = "DE",
                 ads: str | None = "opted_in") -> None:
    conn.execute(sa.text(
        "INSERT INTO shop.customers (customer_id, email, phone, country, created_at) VALUES (:c, :e, :p, :k, :t)"),
        {"c": cid, "e": email, "p": phone, "k": country, "t": T0})
    if ads is not None:
        set_consent(conn, cid, ads)


def set_consent(conn, cid: int, status: str) -> None:
    conn.execute(sa.text(
        "INSERT INTO shop.consents (customer_id, channel, status, source, updated_at) VALUES (:c, 'ads', :s, 'test', :t)"
        " ON CONFLICT (customer_id, channel) DO UPDATE SET status = EXCLUDED.status"),
        {"c": cid, "s": status, "t": T0})


def enroll(conn, cid: int, status: str = "active", *, journey: str = JOURNEY, key: str | None = None,
           holdout: bool = False) -> None:
    conn.execute(sa.text(
        "INSERT INTO lifecycle.enrollments (journey, enrollment_key, customer_id, entered_at, enrolled_at,"
        " enrolled_run_id, status, holdout) VALUES (:j, :k, :c, :t, :t, 'test', :s, :h)"),
        {"j": journey, "k": key or f"cart-{cid}", "c": cid, "t": T0, "s": status, "h": holdout})


def set_status(conn, cid: int, status: str) -> None:
    conn.execute(sa.text("UPDATE lifecycle.enrollments SET status = :s WHERE customer_id = CAST(:c AS text) AND journey = :j"),
                 {"s": status, "c": cid, "j": JOURNEY})


def row(email: str | None, phone: str | None = None, country: str = "DE") -> tuple[str, str]:
    return (hash_email(email) or "", hash_phone(phone, country) or "")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def current_members(engine) -> dict[int, tuple]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT customer_id::bigint AS customer_id, email_sha256, phone_sha256 FROM lifecycle.audience_members"
            " WHERE audience_id = :a AND removed_at IS NULL"), {"a": AUDIENCE}).all()
    return {r.customer_id: (r.email_sha256 or "", r.phone_sha256 or "") for r in rows}


def bulk_members(engine, n: int) -> None:
    """n customers, all with ads consent and an active enrollment (set-based inserts)."""
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO shop.customers (customer_id, email, phone, country, created_at)"
            " SELECT g, 'Shopper' || g || '@Example.com ', '+49151' || lpad(g::text, 8, '0'), 'DE', :t"
            " FROM generate_series(1, :n) g"), {"n": n, "t": T0})
        conn.execute(sa.text(
            "INSERT INTO shop.consents (customer_id, channel, status, source, updated_at)"
            " SELECT g, 'ads', 'opted_in', 'test', :t FROM generate_series(1, :n) g"), {"n": n, "t": T0})
        conn.execute(sa.text(
            "INSERT INTO lifecycle.enrollments (journey, enrollment_key, customer_id, entered_at, enrolled_at,"
            " enrolled_run_id) SELECT :j, 'cart-' || g, g, :t, :t, 'test' FROM generate_series(1, :n) g"),
            {"n": n, "t": T0, "j": JOURNEY})


# ----------------------------------------------------------------------------- hashing
def test_hash_email_trims_lowercases_and_hashes_sha256_hex():
    # SHA-256("test@example.com"), as published in hashing guides and checked with sha256sum
    expected = "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"
    assert hash_email("test@example.com") == expected
    assert hash_email("  Test@Example.COM \t\n") == expected
    assert hash_email(None) is None
    assert hash_email("   ") is None
    assert hash_email("not-an-address") is None


def test_hash_phone_is_e164_digits_without_plus():
    # sha256sum of "16505551234", "4915112345678", "12125550123"
    us = "6069d14bf122fdfd931dc7beb58e5dfbba395b1faf05bdcd42d12358d63d8599"
    de = "8efb96404be52f6109b9db0f687274a81e9e3cc23fabd6f0da5d38baa3d2facd"
    assert hash_phone("+1 (650) 555-1234", "US") == us
    assert hash_phone("(650) 555-1234", "US") == us  # national: read in the customer's country
    assert hash_phone("001 650 555 1234", "DE") == us  # international prefix from Germany
    assert hash_phone("0151 12345678", "DE") == de
    assert hash_phone("+49 151 1234 5678", "FR") == de  # an explicit country code wins
    assert hash_phone("(212) 555-0123", "us") == "53ed517fa8e01227bd3ebdc60c78b3f7a7f3a199decdf492af61584ed4ac608d"
    assert normalise_phone("+44 20 7946 0958", "UK") == "442079460958"  # 'UK' read as GB
    assert hash_phone("12", "DE") is None
    assert hash_phone("", "DE") is None
    assert hash_phone(None, "US") is None
    assert hash_phone("not a number", "US") is None


# ----------------------------------------------------------------------------- the sync
def seed_journey(engine) -> dict[int, tuple]:
    """Customers covering every rule; returns the rows expected in the audience."""
    with engine.begin() as conn:
        add_customer(conn, 1, " Alice@Example.com ", "+49 151 12345678")           # in
        add_customer(conn, 2, "bob@example.com", "0151 22223333")                  # in (national number)
        add_customer(conn, 3, "carol@example.com", ads="opted_out")               # no ads consent
        add_customer(conn, 4, "dan@example.com", ads=None)                        # no consent row at all
        add_customer(conn, 5, "erin@example.com")                                 # converted already
        add_customer(conn, 6, "frank@example.com")                                # other journey only
        add_customer(conn, 7, "grace@example.com")                                # holdout group
        add_customer(conn, 8, None, "(212) 555-0123", country="US")               # in: phone only
        add_customer(conn, 9, "ivan@example.com", "12")                           # in: email only
        add_customer(conn, 10, "judy@example.com", "+33 6 12 34 56 78", "FR")     # in: two carts
        add_customer(conn, 11, None, "12")                                        # no identifier
        for cid in (1, 2, 3, 4, 8, 9, 11):
            enroll(conn, cid)
        enroll(conn, 5, "converted")
        enroll(conn, 6, journey="win_back")
        enroll(conn, 7, holdout=True)
        enroll(conn, 10, key="cart-10a")
        enroll(conn, 10, key="cart-10b")
    return {
        1: row("alice@example.com", "+4915112345678"),
        2: row("bob@example.com", "+4915122223333"),
        8: row(None, "+12125550123", "US"),
        9: row("ivan@example.com"),
        10: row("judy@example.com", "+33612345678", "FR"),
    }


def test_sync_adds_exactly_active_members_with_ads_consent_then_removes_leavers(db, meta):
    expected = seed_journey(db)
    with client_for(meta) as client:
        result = sync_audience(db, JOURNEY, AUDIENCE, client)
        assert result == {"added": 5, "removed": 0, "requests": 1, "invalid_entries": 0, "members": 5}
        assert meta.audience(AUDIENCE) == set(expected.values())
        assert current_members(db) == expected
        (request,) = meta.requests
        assert request.method == "POST" and request.schema == ["EMAIL", "PHONE"]
        assert request.response["num_received"] == 5 and request.response["num_invalid_entries"] == 0
        assert request.session["batch_seq"] == 1 and request.session["last_batch_flag"] is True
        assert request.path == f"/v21.0/{AUDIENCE}/users"

        # 1 converts, 2 withdraws ads consent, 9 leaves the journey: exactly they go.
        with db.begin() as conn:
            set_status(conn, 1, "converted")
            set_consent(conn, 2, "opted_out")
            set_status(conn, 9, "exited")
        result = sync_audience(db, JOURNEY, AUDIENCE, client)
        assert result == {"added": 0, "removed": 3, "requests": 1, "invalid_entries": 0, "members": 2}
        assert meta.requests[-1].method == "DELETE"
        assert set(meta.requests[-1].rows) == {expected[1], expected[2], expected[9]}
        assert meta.audience(AUDIENCE) == {expected[8], expected[10]}
        with db.connect() as conn:
            reasons = dict(conn.execute(sa.text(
                "SELECT customer_id::bigint, remove_reason FROM lifecycle.audience_members WHERE removed_at IS NOT NULL")).all())
        assert reasons == {1: "left_journey", 2: "no_ads_consent", 9: "left_journey"}

        # A new email address: the old row goes out, the new one comes in.
        with db.begin() as conn:
            conn.execute(sa.text("UPDATE shop.customers SET email = 'judy.new@example.com' WHERE customer_id = 10"))
        result = sync_audience(db, JOURNEY, AUDIENCE, client)
        assert result["added"] == 1 and result["removed"] == 1 and result["requests"] == 2
        assert [r.method for r in meta.requests[-2:]] == ["DELETE", "POST"]
        new_judy = row("judy.new@example.com", "+33612345678", "FR")
        assert meta.audience(AUDIENCE) == {expected[8], new_judy}
        assert current_members(db) == {8: expected[8], 10: new_judy}


def test_replaying_a_finished_sync_sends_nothing(db, meta):
    seed_journey(db)
    with client_for(meta) as client:
        sync_audience(db, JOURNEY, AUDIENCE, client)
        before = len(meta.requests)
        again = sync_audience(db, JOURNEY, AUDIENCE, client)
    assert again == {"added": 0, "removed": 0, "requests": 0, "invalid_entries": 0, "members": 5}
    assert len(meta.requests) == before == 1


def test_dry_mode_previews_the_diff_and_sends_nothing(db, meta):
    seed_journey(db)
    with db.begin() as conn:  # the dry lane has its own enrollments
        conn.execute(sa.text("UPDATE lifecycle.enrollments SET mode = 'dry' WHERE customer_id IN ('1', '2')"))
    with client_for(meta) as client:
        preview = sync_audience(db, JOURNEY, AUDIENCE, client, mode="dry")
    assert preview == {"added": 0, "removed": 0, "requests": 0, "would_add": 2, "would_remove": 0, "dry_run": True}
    assert meta.requests == [] and current_members(db) == {}


def test_25000_members_go_in_three_requests_of_one_session(db, meta):
    bulk_members(db, 25_000)
    with client_for(meta) as client:
        result = sync_audience(db, JOURNEY, AUDIENCE, client)
    assert result["added"] == 25_000 and result["requests"] == 3 and result["members"] == 25_000
    sessions = [r.session for r in meta.requests]
    assert [r.method for r in meta.requests] == ["POST"] * 3
    assert len({s["session_id"] for s in sessions}) == 1 and 0 < sessions[0]["session_id"] < 2**63
    assert [s["batch_seq"] for s in sessions] == [1, 2, 3]
    assert [s["last_batch_flag"] for s in sessions] == [False, False, True]
    assert {s["estimated_num_total"] for s in sessions} == {25_000}
    assert [len(r.rows) for r in meta.requests] == [10_000, 10_000, 5_000]
    assert all(r.response["num_invalid_entries"] == 0 for r in meta.requests)
    audience = meta.audience(AUDIENCE)
    assert len(audience) == 25_000
    assert row("shopper17@example.com", "+4915100000017") in audience
    with db.connect() as conn:
        per_batch = conn.execute(sa.text(
            "SELECT added_batch_seq, count(*) FROM lifecycle.audience_members GROUP BY 1 ORDER BY 1")).all()
    assert [tuple(r) for r in per_batch] == [(1, 10_000), (2, 10_000), (3, 5_000)]


def test_failure_mid_upload_then_replay_sends_only_the_unconfirmed_rows(db, meta):
    bulk_members(db, 100)
    meta.fail_next(status=400, code=100, after=1)  # the 2nd request: permanent, not retried
    with client_for(meta, batch_size=40) as client:
        with pytest.raises(AudienceAPIError) as failed:
            sync_audience(db, JOURNEY, AUDIENCE, client)
        assert failed.value.code == 100 and failed.value.status == 400 and not failed.value.retryable
        assert [r.status for r in meta.requests] == [200, 400]
        assert len(current_members(db)) == 40  # the confirmed first batch is recorded
        first_rows = set(meta.requests[0].rows)

        result = sync_audience(db, JOURNEY, AUDIENCE, client)
    assert result == {"added": 60, "removed": 0, "requests": 2, "invalid_entries": 0, "members": 100}
    assert [r.status for r in meta.requests] == [200, 400, 200, 200]
    replay = meta.requests[2:]
    assert [len(r.rows) for r in replay] == [40, 20]
    assert not first_rows & (set(replay[0].rows) | set(replay[1].rows))  # nothing confirmed is sent twice
    assert replay[0].session["session_id"] != meta.requests[0].session["session_id"]  # a fresh session
    assert [(r.session["batch_seq"], r.session["last_batch_flag"]) for r in replay] == [(1, False), (2, True)]
    assert len(meta.audience(AUDIENCE)) == 100
    assert set(current_members(db).values()) == meta.audience(AUDIENCE)


def test_transient_errors_are_retried_and_a_lost_answer_is_harmless(db, meta):
    expected = seed_journey(db)
    meta.fail_next(code=2)                    # Graph "please retry later" (HTTP 500)
    meta.fail_next(status=429, after=1)       # rate limited
    meta.fail_next(drop=True, after=2)        # applied, but the connection drops before the answer
    with client_for(meta) as client:
        result = sync_audience(db, JOURNEY, AUDIENCE, client)
    assert result["added"] == 5 and result["requests"] == 4
    assert [(r.status, r.scripted) for r in meta.requests] == [(500, "fail"), (429, "fail"), (0, "drop"), (200, None)]
    assert meta.requests[0].response["error"]["is_transient"] is True
    # the retry repeats the same batch of the same session, which the server takes as a retry
    assert len({(r.session["session_id"], r.session["batch_seq"]) for r in meta.requests}) == 1
    assert meta.audience(AUDIENCE) == set(expected.values())


def test_retries_are_bounded(meta):
    meta.fail_next(status=503, times=10)
    with client_for(meta, max_retries=2) as client, pytest.raises(AudienceAPIError) as failed:
        client.add(AUDIENCE, [[sha("a@example.com"), ""]])
    assert failed.value.status == 503 and failed.value.code == 1
    assert len(meta.requests) == 3 and client.requests_made == 3


def test_wrong_token_is_an_oauth_error_190_and_nothing_is_recorded(db, meta):
    seed_journey(db)
    with client_for(meta, token="wrong") as client, pytest.raises(AudienceAPIError) as failed:
        sync_audience(db, JOURNEY, AUDIENCE, client)
    err = failed.value
    assert (err.code, err.type, err.message, err.status) == (190, "OAuthException", "Invalid OAuth access token.", 400)
    assert err.fbtrace_id
    assert len(meta.requests) == 1  # not retried
    assert current_members(db) == {} and meta.audience(AUDIENCE) == set()


def test_one_journey_per_audience(db, meta):
    seed_journey(db)
    with client_for(meta) as client:
        sync_audience(db, JOURNEY, AUDIENCE, client)
        with pytest.raises(ValueError, match="kept in step with journey 'cart_abandonment'"):
            sync_audience(db, "win_back", AUDIENCE, client)  # would empty the audience
    assert len(meta.requests) == 1


@pytest.mark.parametrize("host", ["full_url", "host_and_schema"])
def test_from_airflow_reads_the_http_connection(meta, monkeypatch, host):
    conn = {"conn_type": "http", "host": meta.base_url, "password": TOKEN,
            "extra": {"api_version": "v22.0", "timeout": 3}}
    if host == "host_and_schema":
        conn.update(host="127.0.0.1", port=meta.port, schema="http")
    monkeypatch.setenv("AIRFLOW_CONN_LIFECYCLE_META", json.dumps(conn))
    with MetaAudienceClient.from_airflow() as client:
        assert (client.base_url, client.api_version, client.timeout) == (meta.base_url, "v22.0", 3.0)
        assert client.add(AUDIENCE, [[sha("a@example.com"), ""]])["num_received"] == 1
    assert meta.requests[0].path == f"/v22.0/{AUDIENCE}/users"


# ----------------------------------------------------------------------------- the local server
def test_server_validates_rows_and_sessions_like_meta(meta):
    url = f"{meta.base_url}/v21.0/{AUDIENCE}/users"
    good = [sha("a@example.com"), ""]

    def post(payload, session=None, method="POST", **extra):
        form = {"access_token": TOKEN, "payload": json.dumps(payload), **extra}
        if session is not None:
            form["session"] = json.dumps(session)
        return httpx.request(method, url, data=form, timeout=5)

    # invalid rows are counted and sampled, the valid ones applied
    r = post({"schema": ["EMAIL", "PHONE"], "data": [good, ["A@EXAMPLE.COM", ""], [good[0]], ["", ""]]})
    body = r.json()
    assert r.status_code == 200 and body["audience_id"] == AUDIENCE
    assert body["num_received"] == 4 and body["num_invalid_entries"] == 3 and len(body["invalid_entry_samples"]) == 3
    assert meta.audience(AUDIENCE) == {tuple(good)}

    # a JSON body and the single-key schema work too
    r = httpx.post(url, json={"access_token": TOKEN, "payload": {"schema": "EMAIL_SHA256", "data": [sha("b@x.io")]}})
    assert r.status_code == 200 and r.json()["num_invalid_entries"] == 0

    # more than 10,000 rows
    r = post({"schema": ["EMAIL", "PHONE"], "data": [good] * 10_001})
    assert r.status_code == 400 and r.json()["error"]["code"] == 100

    # sessions: start at 1, stay on one audience and method, close with last_batch_flag
    s = {"session_id": 42, "batch_seq": 2, "last_batch_flag": False}
    assert post({"schema": ["EMAIL", "PHONE"], "data": [good]}, s).status_code == 400
    s = {"session_id": 42, "batch_seq": 1, "last_batch_flag": False, "estimated_num_total": 2}
    assert post({"schema": ["EMAIL", "PHONE"], "data": [good]}, s).json()["session_id"] == "42"
    assert post({"schema": ["EMAIL", "PHONE"], "data": [good]}, {**s, "batch_seq": 2}, method="DELETE").status_code == 400
    assert post({"schema": ["EMAIL", "PHONE"], "data": [good]}, {**s, "batch_seq": 2, "last_batch_flag": True}).status_code == 200
    closed = post({"schema": ["EMAIL", "PHONE"], "data": [good]}, {**s, "batch_seq": 3})
    assert closed.status_code == 400 and "closed" in closed.json()["error"]["message"]

    # removal, and an unknown schema key
    assert post({"schema": ["EMAIL", "PHONE"], "data": [good]}, method="DELETE").status_code == 200
    assert tuple(good) not in meta.audience(AUDIENCE)
    assert post({"schema": ["EMAIL", "SHOE_SIZE"], "data": [good]}).json()["error"]["code"] == 100
