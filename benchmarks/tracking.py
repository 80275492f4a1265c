"""What tracking adds to composing an email: rewriting its links and adding the pixel
(lifecycle.tracking.track_html + track_text), against rendering it (lifecycle.render.render_email),
side by side in one process.

    .venv/bin/python benchmarks/tracking.py [--rounds N]

Every shipped email template is rendered with the render tests' sample context (tests/test_render.py),
then tracked as lifecycle.tracking.track_outbound does (the signing key read once per message);
each round times both over all templates. Prints per email: median render time,
median tracking time, links rewritten, then the load average, and last the ratio
`tracking / render: X.XX (tracking Y.YY ms per email)`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "tests")]
os.environ.setdefault("LIFECYCLE_SIGNING_KEY", "benchmark-key-" + os.urandom(16).hex())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()

    from test_render import EXPECTED_TEMPLATES, make_context

    from lifecycle.config import SHOP
    from lifecycle.links import signing_key
    from lifecycle.render import render_email
    from lifecycle.tracking import track_html, track_text

    base = SHOP["base_url"]
    templates = sorted(EXPECTED_TEMPLATES)
    contexts = {t: make_context(t) for t in templates}
    rendered = {t: render_email(t, contexts[t]) for t in templates}  # warm: templates compiled once
    links = sum(track_html(r.html, 1, base).count(f"{base}/c/") + track_text(r.text, 1, base).count(f"{base}/c/")
                for r in rendered.values())
    render_ms, track_ms = [], []
    for i in range(args.rounds):
        started = time.perf_counter()
        for t in templates:
            render_email(t, contexts[t])
        render_ms.append((time.perf_counter() - started) * 1000 / len(templates))
        started = time.perf_counter()
        for t in templates:  # as lifecycle.tracking.track_outbound does per message
            r, key = rendered[t], signing_key()
            track_html(r.html, 100_000 + i, base, key=key)
            track_text(r.text, 100_000 + i, base, key=key)
        track_ms.append((time.perf_counter() - started) * 1000 / len(templates))
    render, track = statistics.median(render_ms), statistics.median(track_ms)
    print(f"{len(templates)} email templates, {args.rounds} rounds, {links / len(templates):.1f} links tracked per email")
    print(f"render  median {render:.2f} ms per email (min {min(render_ms):.2f}, max {max(render_ms):.2f})")
    print(f"track   median {track:.2f} ms per email (min {min(track_ms):.2f}, max {max(track_ms):.2f})")
    print("load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"tracking / render: {track / render:.2f} (tracking {track:.2f} ms per email)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
