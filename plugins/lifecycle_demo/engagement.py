"""The demo's readers: opens and clicks on what the demo sent, made as real HTTP requests to the
real web service (python -m lifecycle.web_service), so lifecycle.engagement and the funnels
have something to show.

Seeded, so two demos with the same shop make the same requests: each email is opened by its
reader at `Readers.open_rate` (through its open pixel, with a mail client's User-Agent), and a
reader who opened it clicks one of its tracked links at `click_rate`; a few read with images off (a click,
no pixel). Apple Mail users' emails are also fetched at once by Apple's Mail Privacy Protection
(the pixel with MPP's bare User-Agent) and some mailboxes sit behind a link scanner (Microsoft
Defender's Safe Links: a HEAD and a GET of every link). SMS and push links get clicked too. The
service classifies every request itself (lifecycle.tracking.classify); the demo only makes them.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from pathlib import Path
from urllib.parse import urlsplit

from lifecycle_demo.ports import free_port


@dataclass(frozen=True)
class Readers:
    """How the demo's readers behave (shares of emails, readers or messages)."""

    open_rate: float = 0.45
    click_rate: float = 0.30  # of the emails opened
    images_off_click_rate: float = 0.04  # a click on an email whose pixel never loads
    apple_mail_share: float = 0.25  # readers using Apple Mail with Mail Privacy Protection on
    scanned_share: float = 0.06  # mailboxes behind a link-scanning security gateway
    sms_click_rate: float = 0.15
    push_click_rate: float = 0.10


MAIL_CLIENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
)
BROWSERS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.6; rv:133.0) Gecko/20100101 Firefox/133.0",
)
MPP_PREFETCH = "Mozilla/5.0"  # Apple's prefetching proxy sends no more than this
SCANNER = "Mozilla/5.0 (compatible; Microsoft Defender SafeLinks URL detonation)"
_TRACKED = re.compile(r"https?://[^\s\"'<>]+/(?:c/[A-Za-z0-9_-]+|o/[A-Za-z0-9_-]+\.gif)")


@contextlib.contextmanager
def web_service(warehouse_url: str | None, env: dict[str, str], log_path: Path,
                log_level: str = "warning") -> Iterator[int]:
    """`python -m lifecycle.web_service` as its own process on a free local port (the shop's
    web front would route /o/, /c/, /unsubscribe and /preferences to it), logging to `log_path`;
    yields the port once it answers /health. Without `warehouse_url` the service reads the
    warehouse from the Airflow connection in `env` (AIRFLOW_CONN_LIFECYCLE_WAREHOUSE), as
    docker-compose.yaml runs it. The demo and the tests (test_unsubscribe_service,
    test_tracking) start it here."""
    args = ["--log-level", log_level] + (["--warehouse-url", warehouse_url] if warehouse_url else [])
    for _attempt in range(3):  # the free port could be taken between probing and binding
        port = free_port()
        with log_path.open("ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "lifecycle.web_service", "--host", "127.0.0.1", "--port",
                                     str(port), *args], env=env, stdout=log, stderr=subprocess.STDOUT)
        if _answers_health(proc, port, timeout=60):  # it imports Airflow: slow on a busy machine
            break
        _stop(proc)
    else:
        raise RuntimeError(f"the web service did not start: see {log_path}:\n{log_path.read_text()[-3000:]}")
    try:
        yield port
    finally:
        _stop(proc)


def _answers_health(proc: subprocess.Popen, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if _status(port, "GET", "/health") == 200:
            return True
        time.sleep(0.05)
    return False


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _status(port: int, method: str, path: str, user_agent: str | None = None) -> int | None:
    """One request to the local service (redirects are not followed: the 302 is the answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers={"User-Agent": user_agent} if user_agent else {})
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        conn.close()


def tracked_links(text: str) -> tuple[list[str], list[str]]:
    """(click paths, pixel paths) of the tracked URLs in `text`, in order, without repeats."""
    clicks, pixels = [], []
    for url in dict.fromkeys(_TRACKED.findall(text)):
        path = urlsplit(url).path
        (pixels if path.startswith("/o/") else clicks).append(path)
    return clicks, pixels


def _email_links(path: Path) -> tuple[str, list[str], list[str]]:
    message = BytesParser(policy=policy.default).parse(path.open("rb"))
    html = message.get_body(("html",))
    clicks, pixels = tracked_links(html.get_content() if html is not None else "")
    return str(message["To"]), clicks, pixels


def simulate(port: int, outbox: Path, sms_jsonl: Path, push_jsonl: Path, seed: int,
             readers: Readers = Readers()) -> Counter:
    """Make the readers' requests; returns how many of each were made (what the service made of
    them is in lifecycle.engagement)."""
    rng = random.Random(seed)
    made: Counter[str] = Counter()
    people: dict[str, tuple[bool, bool, str, str]] = {}  # address -> apple mail, scanned, client, browser

    def hit(method: str, path: str, agent: str | None, what: str) -> None:
        if _status(port, method, path, agent) in (200, 302):
            made[what] += 1

    for eml in sorted(outbox.glob("*.eml")):
        to, clicks, pixels = _email_links(eml)
        if not clicks and not pixels:
            continue  # transactional, or tracking: false
        if to not in people:
            people[to] = (rng.random() < readers.apple_mail_share, rng.random() < readers.scanned_share,
                          rng.choice(MAIL_CLIENTS), rng.choice(BROWSERS))
        apple, scanned, client, browser = people[to]
        if scanned:
            for link in clicks:
                hit("HEAD", link, SCANNER, "scanner requests")
                hit("GET", link, SCANNER, "scanner requests")
        if apple:
            for pixel in pixels:
                hit("GET", pixel, MPP_PREFETCH, "Mail Privacy Protection prefetches")
        opened = rng.random() < readers.open_rate
        if opened:
            for pixel in pixels:
                hit("GET", pixel, client, "opens")
        if clicks and ((opened and rng.random() < readers.click_rate) or rng.random() < readers.images_off_click_rate):
            hit("GET", rng.choice(clicks), browser, "email clicks")

    for path, key, rate, what in ((sms_jsonl, "body", readers.sms_click_rate, "SMS clicks"),
                                  (push_jsonl, "payload", readers.push_click_rate, "push clicks")):
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            clicks, _ = tracked_links(json.dumps(record.get(key), ensure_ascii=False))
            if clicks and rng.random() < rate:
                hit("GET", rng.choice(clicks), rng.choice(BROWSERS), what)
    return made


ENGAGEMENT_SQL = """
SELECT m.journey,
       count(DISTINCT m.message_id) AS sent,
       count(DISTINCT e.message_id) FILTER (WHERE e.kind = 'open' AND e.is_human) AS opened,
       count(DISTINCT e.message_id) FILTER (WHERE e.kind = 'click' AND e.is_human) AS clicked,
       count(e.engagement_id) FILTER (WHERE e.agent_class = 'privacy_proxy') AS mpp,
       count(e.engagement_id) FILTER (WHERE e.agent_class IN ('scanner', 'bot')) AS scanners
FROM lifecycle.messages m
LEFT JOIN lifecycle.engagement e ON e.message_id = m.message_id
WHERE m.status = 'sent' AND m.kind = 'marketing' AND m.mode = 'live'
GROUP BY m.journey
ORDER BY m.journey
"""


def engagement_table(engine) -> str:
    """Per journey: marketing messages sent, opened and clicked by people (distinct messages),
    and the machine requests the service set apart."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        rows = conn.execute(sa.text(ENGAGEMENT_SQL)).all()
    lines = [f"  {'journey':<24}{'sent':>6}{'opened':>8}{'clicked':>9}   {'MPP prefetches':>14}{'scanners/bots':>15}"]
    for r in rows:
        lines.append(f"  {r.journey:<24}{r.sent:>6}{r.opened:>8}{r.clicked:>9}   {r.mpp:>14}{r.scanners:>15}")
    return "\n".join(lines)
