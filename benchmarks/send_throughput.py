"""Send throughput: the project's send task against a plain client loop, same messages, same sink.

    .venv/bin/python benchmarks/send_throughput.py [--messages 5000] [--http-messages 1000] [--repeats 3]
        [--channels email,sms,push] [--http-concurrency N]

On a fresh embedded PostgreSQL it plants N planned cart_abandonment reminders (email), and
M SMS and M web push messages, for customers with consent (batches of 500, as planned by the
engine), then, `--repeats` times, side by side:

- **email, rendered messages**: the messages rendered beforehand, then claimed, sent and
  recorded window by window by the send task's own loop (`lifecycle.send.send_rendered`: claim
  a window in one statement, the email channel's pipelined `deliver_many`, the window's outcomes
  and the next window's claim in one transaction).
- **email, whole send task**: `lifecycle.send.send_batch` over every batch (send-time checks, render, claim a
  window, deliver over one SMTP session per batch, record the outcomes), against a plain
  smtplib loop (`sendmail` per message over one session) sending the very same wire bytes,
  composed beforehand. The SMTP server (aiosmtpd, offering PIPELINING, storing nothing) runs in
  a process of its own, as a provider would.
- **sms**: the same, against a plain httpx loop POSTing the same forms to the same local
  server speaking Twilio's Messages API (its own process). The project's SMS channel has 4
  requests in flight (`--http-concurrency` changes it) on urllib3 connections.
- **push**: the same, against a plain httpx loop POSTing the same encrypted bodies (RFC 8291,
  encrypted beforehand, untimed) with the same VAPID header to the same local web push service;
  the project encrypts each message (a new key pair each, as it must).

The two are timed batch by batch (500 messages), interleaved, the order alternating, so a swing
in the machine's load hits both alike; the messages are reset to planned between repeats. It prints messages/s per repeat and
min/median/max, the CPU each side spends per message (this process, the provider's server,
PostgreSQL: on busy cores the rates follow those sums), the load average before and after,
each channel's ratio of medians, and
last the email ratio on rendered messages: `send/raw ratio: 0.NN` (goal: >= 0.80). That one
times what the project adds to sending a message it has rendered: the window's claim (one
statement), the channel (hand-built wire bytes, pipelined SMTP: one round trip per message),
the window's record (one statement, committed with the next claim). The whole send task (send-time checks, rendering with CSS inlining and the signed
unsubscribe links, then the same) is timed too and printed above it: a plain loop renders
nothing, so that ratio says what rendering costs.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

from proc_cpu import loadavg, postgres_cpu, process_cpu

AS_OF = datetime(2026, 11, 20, 12, tzinfo=UTC)  # the sender's clock: midday, inside SMS hours
BATCH = 500
RESET = ("UPDATE lifecycle.messages SET status = 'planned', reason = NULL, claim_token = NULL, claimed_at = NULL, "
         "attempts = 0, provider_message_id = NULL, sent_at = NULL, internet_message_id = NULL, payload = '{}' "
         "WHERE channel = :channel")
SINK = """
import sys
from lifecycle_demo.sinks.smtp_server import SinkHandler, _controller
from lifecycle_demo.sinks.serving import serve_until_signalled
controller = _controller(SinkHandler(None), "127.0.0.1", 0)  # accepts and forgets: no disk, no memory
controller.start()
print(f"listening on 127.0.0.1:{controller.port}", flush=True)
sys.exit(serve_until_signalled(controller.stop))
"""
CART = {
    "cart_id": 0, "cart_updated_at": "2026-11-20T10:00:00+00:00", "cart_total": 117.5, "currency": "EUR",
    # product references, as cart_abandonment.sql stores them: the send fills in the cards (PRODUCTS)
    "items": [{"product_id": 11, "quantity": 2, "unit_price": 49.0}, {"product_id": 12, "quantity": 1, "unit_price": 19.5}],
}
PRODUCTS = [  # shop.products rows the cards come from
    {"product_id": 11, "sku": "linen-shirt", "name": "Linen Shirt", "price": 49.0,
     "image_url": "https://cdn.shop.example.com/p/11.jpg"},
    {"product_id": 12, "sku": "canvas-tote", "name": "Canvas Tote Bag", "price": 19.5,
     "image_url": "https://cdn.shop.example.com/p/12.jpg"},
]
SMS_SID, SMS_TOKEN = "AC" + "b" * 32, "bench-token"


def start_process(args: list[str], banner: str) -> tuple[subprocess.Popen, str]:
    """A server in a process of its own; (process, the first line it prints)."""
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    line = proc.stdout.readline()
    if banner not in line:
        proc.kill()
        raise RuntimeError(f"{args}: did not start ({line!r})")
    return proc, line


def plant(engine, emails: int, texts: int, pushes: int, push_origin: str) -> dict[str, list[dict]]:
    """Customers with consent, one active enrollment each, and planned messages in batches of 500:
    what plan_messages leaves for the send tasks. The batch descriptors per channel."""
    import sqlalchemy as sa

    from lifecycle_demo.demo_shop import _b64, push_subscription_keys

    n = max(emails, texts, pushes)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO shop.customers (customer_id, email, phone, first_name, last_name, country, timezone, locale, "
            "created_at) SELECT i, 'customer' || i || '@example.com', '+4915112' || lpad(i::text, 6, '0'), "
            "'Ana', 'Silva', 'DE', 'UTC', 'en_GB', :t FROM generate_series(1, :n) i"), {"n": n, "t": AS_OF})
        conn.execute(sa.text(
            "INSERT INTO shop.consents (customer_id, channel, status, updated_at) SELECT i, c, 'opted_in', :t "
            "FROM generate_series(1, :n) i, unnest(ARRAY['email', 'sms', 'push']) c"), {"n": n, "t": AS_OF})
        conn.execute(sa.text("INSERT INTO shop.products (product_id, sku, name, category, price, image_url, product_type) "
                             "VALUES (:product_id, :sku, :name, 'apparel', :price, :image_url, 'soft')"), PRODUCTS)
        subscriptions = []
        for i in range(1, pushes + 1):
            private_key, auth = push_subscription_keys(i, 7)
            from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

            p256dh = private_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
            subscriptions.append({"i": i, "e": f"{push_origin}/push/bench{i}", "p": _b64(p256dh), "a": _b64(auth)})
        if subscriptions:
            conn.execute(sa.text("INSERT INTO shop.push_subscriptions (subscription_id, customer_id, endpoint, p256dh, "
                                 "auth, created_at) VALUES (:i, :i, :e, :p, :a, :t)"),
                         [{**s, "t": AS_OF} for s in subscriptions])
        batches = {}
        for channel, count, step in (("email", emails, "reminder_1"), ("sms", texts, "reminder_2"),
                                     ("push", pushes, "reminder_1")):
            conn.execute(sa.text(  # one enrollment per customer and channel (one message per step each)
                "INSERT INTO lifecycle.enrollments (journey, enrollment_key, customer_id, entered_at, enrolled_at, "
                "enrolled_run_id, context) SELECT 'cart_abandonment', 'bench-' || :channel || '-' || i, i, :t, :t, "
                "'bench', CAST(:cart AS jsonb) || jsonb_build_object('cart_id', i, 'cart_url', "
                "'https://shop.example.com/cart/' || i || '?token=' || md5(i::text)) FROM generate_series(1, :n) i"),
                {"n": count, "t": AS_OF - timedelta(hours=2), "cart": json.dumps(CART), "channel": channel})
            conn.execute(sa.text(
                "INSERT INTO lifecycle.messages (idempotency_key, journey, enrollment_id, customer_id, step, channel, "
                "template, kind, status, due_at, planned_for, planned_run_id, run_id, batch_no) "
                "SELECT 'cart_abandonment:' || e.enrollment_key || ':' || :step || ':' || :channel, e.journey, "
                "e.enrollment_id, e.customer_id, :step, :channel, 'cart_abandonment/' || :step, 'marketing', "
                "'planned', :due, :as_of, 'bench', 'bench', (e.customer_id::bigint - 1) / :size "
                "FROM lifecycle.enrollments e WHERE e.enrollment_key LIKE 'bench-' || :channel || '-%'"),
                {"step": step, "channel": channel, "due": AS_OF - timedelta(hours=1), "as_of": AS_OF, "size": BATCH})
            batches[channel] = [{"journey": "cart_abandonment", "run_id": "bench", "batch": b, "channel": channel,
                                 "as_of": AS_OF.isoformat()} for b in range(-(-count // BATCH))]
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM (ANALYZE)")
    return batches


def reset(engine, channel: str) -> None:
    import sqlalchemy as sa

    with engine.begin() as conn:
        conn.execute(sa.text(RESET), {"channel": channel})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM (ANALYZE) lifecycle.messages")


def project(engine, spec, batches, open_channel) -> tuple[float, dict]:
    """Every batch through the engine's send task; (seconds, messages by status)."""
    from collections import Counter

    from lifecycle import send

    counts: Counter = Counter()
    profiler = None
    if os.environ.get("SEND_BENCH_PROFILE"):  # where the project's time goes, printed after the run
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    t0 = time.perf_counter()
    for batch in batches:
        counts.update(send.send_batch(engine, spec, batch, open_channel, clock=lambda: AS_OF))
    seconds = time.perf_counter() - t0
    if profiler is not None:
        import pstats

        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return seconds, {status: n for status, n in counts.items() if n}


def loaded(engine, spec, channel: str, with_rows: bool = False) -> list:
    """Each planned message as the send task renders it (for the plain loops, prepared untimed)."""
    from lifecycle import channels as registry
    from lifecycle import send

    rows = []
    with engine.connect() as conn:
        for b in range(10**6):
            batch = {"journey": "cart_abandonment", "run_id": "bench", "batch": b, "channel": channel}
            got = send.load_batch(conn, batch)
            if not got:
                break
            rows += got
    built = [registry.channel(channel).outbound(row, spec, AS_OF) for row in rows]
    return (rows, built) if with_rows else built


def delivery_path(engine, spec, port: int, rows: list, outbounds: list, window: int, spent: dict) -> float:
    """The project's delivery on rendered messages: send_batch's own window loop
    (`lifecycle.send.send_rendered`): claim a window (one statement), hand it to the channel
    (pipelined SMTP), record its outcomes together with the next window's claim (one
    transaction). Seconds; `spent` adds up the channel's share ('deliver') and the rest
    (the claim and record transactions, 'database')."""
    from lifecycle import send
    from lifecycle.channels.email import EmailChannel

    class TimedChannel(EmailChannel):
        def deliver_many(self, messages):
            t = time.perf_counter()
            try:
                return super().deliver_many(messages)
            finally:
                spent["deliver"] = spent.get("deliver", 0.0) + time.perf_counter() - t

    pairs = list(zip(rows, outbounds, strict=True))
    windows = [pairs[start:start + window] for start in range(0, len(pairs), window)]
    before = spent.get("deliver", 0.0)
    t0 = time.perf_counter()
    counts = send.send_rendered(engine, spec, windows, lambda name: TimedChannel("127.0.0.1", port),
                                clock=lambda: AS_OF)
    seconds = time.perf_counter() - t0
    assert counts == {"sent": len(pairs)}, counts
    spent["database"] = spent.get("database", 0.0) + seconds - (spent["deliver"] - before)
    return seconds


def raw_email(port: int, wire: list[tuple[str, bytes]], sender: str) -> float:
    t0 = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        for to, raw in wire:
            smtp.sendmail(sender, [to], raw)
    return time.perf_counter() - t0


def raw_http(requests: list[tuple[str, dict, bytes | dict]], auth=None) -> float:
    import httpx

    t0 = time.perf_counter()
    with httpx.Client(auth=auth, timeout=30) as client:
        for url, headers, body in requests:
            response = (client.post(url, headers=headers, data=body) if isinstance(body, dict)
                        else client.post(url, headers=headers, content=body))
            if response.status_code != 201:
                raise RuntimeError(f"plain loop: {response.status_code} {response.text[:200]}")
    return time.perf_counter() - t0


def summary(label: str, rates: list[float]) -> str:
    return (f"  {label:<24} min {min(rates):8.0f}  median {statistics.median(rates):8.0f}  "
            f"max {max(rates):8.0f} msgs/s   ({', '.join(f'{r:.0f}' for r in rates)})")


def compare(name: str, sizes: list[int], repeats: int, ours, theirs, after_repeat,
            server: subprocess.Popen | None = None, pgdata: Path | None = None) -> float:
    """Time the two part by part (a batch of 500 each), interleaved, the order alternating, so a
    swing in the machine's load hits both alike; `repeats` times. Print the figures; return the
    ratio of the medians. Each part's pair also gives a ratio of its own: their median is printed
    too (steadier under a swinging load than the totals).

    Also the CPU each side spends per message: in this process (every thread), in the provider's
    server, in PostgreSQL. On a machine whose cores are all busy, the rates follow those sums
    rather than anything either side waits for; they barely move with the load."""
    mine, plain, pairs = [], [], []
    total = sum(sizes)
    cpu = {label: {"ours": 0.0, "server": 0.0, "database": 0.0} for label in ("project", "plain loop")}
    for r in range(repeats):
        spent = {"project": 0.0, "plain loop": 0.0}
        for part in range(len(sizes)):
            took = {}
            for label, run in (("project", ours), ("plain loop", theirs))[:: 1 if (part + r) % 2 == 0 else -1]:
                before = (time.process_time(), process_cpu(server.pid) if server else 0.0,
                          postgres_cpu(pgdata) if pgdata else 0.0)
                took[label] = run(part)
                spent[label] += took[label]
                after = (time.process_time(), process_cpu(server.pid) if server else 0.0,
                         postgres_cpu(pgdata) if pgdata else 0.0)
                for key, b, a in zip(("ours", "server", "database"), before, after, strict=True):
                    cpu[label][key] += a - b
            pairs.append(took["plain loop"] / took["project"])
        after_repeat()
        mine.append(total / spent["project"])
        plain.append(total / spent["plain loop"])
        print(f"  {name} repeat {r + 1}: project {total:,} messages in {spent['project']:6.2f} s = {mine[-1]:5.0f} msgs/s,"
              f" plain loop {spent['plain loop']:6.2f} s = {plain[-1]:5.0f} msgs/s (load {loadavg()})", flush=True)
    ratio = statistics.median(mine) / statistics.median(plain)
    quartiles = statistics.quantiles(pairs, n=4) if len(pairs) > 1 else pairs * 3
    print(summary(f"{name} project", mine))
    print(summary(f"{name} plain loop", plain))
    per = {label: {key: 1000 * seconds / (total * repeats) for key, seconds in parts.items()}
           for label, parts in cpu.items()}
    print(f"  {name} CPU ms per message: " + "; ".join(
        f"{label} {sum(parts.values()):.2f} (this process {parts['ours']:.2f}, server {parts['server']:.2f}, "
        f"PostgreSQL {parts['database']:.2f})" for label, parts in per.items()), flush=True)
    print(f"  {name}: project/plain ratio of medians {ratio:.2f}; median of the {len(pairs)} parts' ratios "
          f"{statistics.median(pairs):.2f} (quartiles {quartiles[0]:.2f}-{quartiles[2]:.2f})", flush=True)
    return ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="emails (default 5000)")
    parser.add_argument("--http-messages", type=int, default=1000, help="SMS and push messages each (default 1000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--http-concurrency", type=int, default=None,
                        help="requests in flight for SMS and push (default: the channels' own default)")
    parser.add_argument("--channels", default="email,sms,push",
                        help="which comparisons to run (comma-separated; default email,sms,push)")
    args = parser.parse_args(argv)
    chosen = {name.strip() for name in args.channels.split(",") if name.strip()}
    if not chosen or chosen - {"email", "sms", "push"}:
        parser.error(f"--channels: a comma-separated subset of email,sms,push, not {args.channels!r}")
    if "email" not in chosen:
        args.messages = 0
    if not chosen & {"sms", "push"}:
        args.http_messages = 0
    os.environ.setdefault("LIFECYCLE_SIGNING_KEY", secrets.token_urlsafe(32))
    os.environ["LIFECYCLE_PUSH_ALLOW_PRIVATE"] = "1"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
    import logging

    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    # The SMS and push senders log one INFO line per message (the task log); not on this screen.
    for name in ("lifecycle.channels.sms", "lifecycle.channels.push"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import sqlalchemy as sa
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from lifecycle import schema
    from lifecycle.channels.email import EmailChannel, compose
    from lifecycle.channels.push import PushChannel
    from lifecycle.channels.sms import SMSChannel
    from lifecycle.config import SEGMENTS_DIR, SHOP
    from lifecycle.spec import load_spec
    from lifecycle.warehouse import start_embedded, stop_embedded
    from lifecycle_demo.demo_shop import create_shop_schema

    # A SIGTERM (make interrupted, a CI timeout) still stops every server this script started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"load average {loadavg()} (start)", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="lifecycle-send-bench-"))
    servers: list[subprocess.Popen] = []
    started = False
    try:
        with warnings.catch_warnings(action="ignore"):
            url = start_embedded(tmp / "pgdata").replace("postgresql://", "postgresql+psycopg2://", 1)
        started = True
        engine = sa.create_engine(url)
        pgdata = tmp / "pgdata"
        smtp_server, banner = start_process(["-c", SINK], "listening on")
        servers.append(smtp_server)
        smtp_port = int(banner.rsplit(":", 1)[1])
        proc, banner = start_process(["-m", "lifecycle_demo.sinks.twilio_server", "--port", "0", "--account-sid",
                                      SMS_SID, "--auth-token", SMS_TOKEN], "listening on")
        servers.append(proc)
        sms_server = proc
        sms_url = banner.split(" on ", 1)[1].split()[0]
        proc, banner = start_process(["-m", "lifecycle_demo.sinks.push_server", "--port", "0", "--warehouse-url",
                                      url, "--seed", "7"], "listening on")
        servers.append(proc)
        push_server = proc
        push_origin = banner.split(" on ", 1)[1].split("/push/")[0]
        create_shop_schema(engine)
        schema.migrate(engine)
        batches = plant(engine, args.messages, args.http_messages if "sms" in chosen else 0,
                        args.http_messages if "push" in chosen else 0, push_origin)
        spec = load_spec(SEGMENTS_DIR / "cart_abandonment.sql")
        # A send task runs in a process that has Airflow imported already: open each channel once
        # (the email channel imports airflow.sdk and the smtp provider) before anything is timed.
        with EmailChannel("127.0.0.1", smtp_port):
            pass
        print(f"planted {args.messages:,} emails, {args.http_messages:,} SMS and {args.http_messages:,} push messages "
              f"in batches of {BATCH}; send window {spec.send_window or 'LIFECYCLE_SEND_WINDOW'} "
              f"({os.environ.get('LIFECYCLE_SEND_WINDOW', '50')})", flush=True)

        # email ------------------------------------------------------------------
        if "email" in chosen:
            sender = SHOP["from_email"]
            rows, outbounds = loaded(engine, spec, "email", with_rows=True)
            wire = [(m.to, compose(m, sender, SHOP["name"])) for m in outbounds]
            assert len(wire) == args.messages
            from lifecycle.send import window_size

            window = window_size(spec)

            sizes = [min(BATCH, args.messages - start) for start in range(0, args.messages, BATCH)]
            spent: dict[str, float] = {}

            def email_project(part: int) -> float:
                seconds, counts = project(engine, spec, batches["email"][part:part + 1],
                                          lambda name: EmailChannel("127.0.0.1", smtp_port))
                assert counts == {"sent": sizes[part]}, counts
                return seconds

            def rendered_project(part: int) -> float:
                cut = slice(part * BATCH, part * BATCH + sizes[part])
                return delivery_path(engine, spec, smtp_port, rows[cut], outbounds[cut], window, spent)

            def raw(part: int) -> float:
                return raw_email(smtp_port, wire[part * BATCH:part * BATCH + sizes[part]], sender)

            def reset_email() -> None:
                if spent:
                    print("    (project's parts: the channel's deliver_many {deliver:.2f} s, the rest (claim and record "
                          "transactions, the loop) {database:.2f} s)".format(**spent), flush=True)
                    spent.clear()
                reset(engine, "email")

            print(f"email, rendered messages: {args.messages:,} to an SMTP server in its own process", flush=True)
            rendered_ratio = compare("email rendered", sizes, args.repeats, rendered_project, raw, reset_email,
                                     smtp_server, pgdata)
            print(f"email, whole send task (send-time checks and rendering included): {args.messages:,}", flush=True)
            email_ratio = compare("email send_batch", sizes, args.repeats, email_project, raw, reset_email,
                                  smtp_server, pgdata)

        in_flight = {} if args.http_concurrency is None else {"concurrency": args.http_concurrency}
        http_sizes = [min(BATCH, args.http_messages - start) for start in range(0, args.http_messages, BATCH)]

        # sms --------------------------------------------------------------------
        if "sms" in chosen:
            def sms_channel(name):
                return SMSChannel(sms_url, SMS_SID, SMS_TOKEN, from_number="Northwind", **in_flight)

            forms = [(sms_channel("sms").messages_url, {}, {"To": m.to, "Body": m.body, "From": "Northwind"})
                     for m in loaded(engine, spec, "sms")]

            def sms_project(part: int) -> float:
                seconds, counts = project(engine, spec, batches["sms"][part:part + 1], sms_channel)
                assert counts == {"sent": http_sizes[part]}, counts
                return seconds

            print(f"sms: {args.http_messages:,} messages to a Twilio Messages API server in its own process", flush=True)
            sms_ratio = compare("sms", http_sizes, args.repeats, sms_project,
                                lambda part: raw_http(forms[part * BATCH:(part + 1) * BATCH], auth=(SMS_SID, SMS_TOKEN)),
                                lambda: reset(engine, "sms"), sms_server, pgdata)

        # push -------------------------------------------------------------------
        if "push" in chosen:
            key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()

            def push_channel(name):
                return PushChannel(key, "mailto:ops@shop.example.com", allow_http=True, allow_private=True,
                                   **in_flight)

            from lifecycle.channels.push import encrypt, subscription_keys

            pusher = push_channel("push")
            requests = []
            for m in loaded(engine, spec, "push"):  # encrypted here, untimed, as the channel encrypts each
                body = encrypt(json.dumps(m.payload, separators=(",", ":"), ensure_ascii=False).encode(),
                               *subscription_keys(m))
                headers = {"TTL": str(m.ttl), "Urgency": m.urgency, "Content-Encoding": "aes128gcm",
                           **pusher.vapid_headers(push_origin)}
                requests.append((m.endpoint, headers, body))

            def push_project(part: int) -> float:
                seconds, counts = project(engine, spec, batches["push"][part:part + 1], push_channel)
                assert counts == {"sent": http_sizes[part]}, counts
                return seconds

            print(f"push: {args.http_messages:,} messages to a web push service in its own process "
                  "(the plain loop's bodies are encrypted beforehand)", flush=True)
            push_ratio = compare("push", http_sizes, args.repeats, push_project,
                                 lambda part: raw_http(requests[part * BATCH:(part + 1) * BATCH]), lambda: reset(engine, "push"),
                                 push_server, pgdata)

        print(f"load average {loadavg()} (end)")
        if "sms" in chosen:
            print(f"sms/raw ratio (send_batch, rendering included): {sms_ratio:.2f}")
        if "push" in chosen:
            print(f"push/raw ratio (send_batch, rendering and encryption included): {push_ratio:.2f}")
        if "email" in chosen:
            print(f"email send_batch/raw ratio (send-time checks and rendering included): {email_ratio:.2f}")
            print(f"the same {args.messages:,} rendered emails: claim a window of {window}, pipelined SMTP, "
                  "record the window")
            print(f"send/raw ratio: {rendered_ratio:.2f}")
        return 0
    finally:
        for proc in servers:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if started:
            with warnings.catch_warnings(action="ignore"):
                stop_embedded(tmp / "pgdata")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
