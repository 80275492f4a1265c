"""A journey DAG's `doc_md`: what the segment file says, as an analyst reads it in Airflow.

Steps, exits, conditions and params as Markdown tables, the schedule in words, the segment SQL in a
collapsed block and the files hash line (lifecycle/fingerprint.py) that makes every edit of the
journey's files a new DAG version. Built at parse time from the spec alone: no database, no network.

Airflow 3.3's UI renders doc_md with raw HTML skipped, so the `<details>` wrapper only collapses the
SQL where HTML is allowed (a Markdown viewer, the API's raw doc_md); in the Airflow UI the heading
and the code block show, which is still the SQL under its own heading."""

from __future__ import annotations

from datetime import timedelta

from lifecycle.spec import JourneySpec, Step

DESCRIPTION_LIMIT = 200  # what Airflow shows in the DAG list; longer text is cut on a word boundary
SCHEDULE_WORDS = {
    "hourly": "every hour, on the hour (UTC); each run covers the hour before it",
    "daily": "every day at 00:00 UTC; each run covers the day before it",
    "weekly": "every Monday at 00:00 UTC; each run covers the week before it",
}
UNITS = (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60))


def cut_words(text: str, limit: int = DESCRIPTION_LIMIT) -> str:
    """`text` on one line, at most `limit` characters, cut after a whole word with an ellipsis."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    if " " in head and not text[limit - 1].isspace():
        head = head.rsplit(" ", 1)[0]
    return head.rstrip(" ,;:.-—") + "…"


def human_schedule(spec: JourneySpec) -> str:
    return SCHEDULE_WORDS.get(spec.schedule, f"cron `{spec.cron}` (UTC)")


def human_duration(delta: timedelta) -> str:
    """`2 days`, `1 hour 30 minutes`; zero is `0`."""
    seconds, words = int(delta.total_seconds()), []
    for unit, size in UNITS:
        n, seconds = divmod(seconds, size)
        if n:
            words.append(f"{n} {unit}{'s' if n != 1 else ''}")
    return " ".join(words) or "0"


def _after(step: Step) -> str:
    return "at entry" if not step.after else f"{human_duration(step.after)} after entry"


def _cell(value) -> str:
    """A table cell: Markdown's `|` and line breaks escaped; empty is an en dash."""
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ") or "–"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _coupon(coupon) -> str:
    if coupon is None:
        return ""
    text = f"{coupon.percent_off:g}% off, valid {coupon.valid_days} days, prefix `{coupon.prefix}`"
    return text + (f", for the product in `{coupon.product}`" if coupon.product else "")


def _variants(step: Step) -> str:
    """A step's A/B variants (`variants:`): name, weight and what differs."""
    parts = []
    for v in getattr(step, "variants", None) or ():
        what = f"subject “{v.subject}”" if v.subject else (f"`{v.template}`" if v.template else "the step's own subject and template")
        parts.append(f"{v.name} (weight {v.weight:g}): {what}")
    return "; ".join(parts)


def steps_table(spec: JourneySpec) -> str:
    rows = []
    for s in spec.steps:
        what = f"action `{s.action}`" if s.action else (f"`{s.template}`" if s.template else "")
        rows.append([f"`{s.name}`", _after(s), " → ".join(s.channels), what,
                     f"`{s.when}`" if s.when else "", f"`{s.unless}`" if s.unless else "",
                     _coupon(s.coupon), _variants(s), human_duration(s.max_lateness)])
    return _table(["step", "when due", "channel", "template / action", "only if", "unless", "coupon", "variants",
                   "late after"], rows)


def exits_table(spec: JourneySpec) -> str:
    rows = []
    for e in spec.exits:
        then = f"{e.channel} `{e.template}`" if e.template else ""
        if e.template and e.coupon:
            then += f" with a code ({_coupon(e.coupon)})"
        params = ", ".join(f"{k}: `{v}`" for k, v in sorted(e.params.items()))
        rows.append([f"`{e.when}`", params, e.reason or e.when, e.status, then])
    return _table(["when", "params", "recorded as", "status", "then sends"], rows)


def conditions_table(spec: JourneySpec) -> str:
    uses: dict[str, list[str]] = {}
    for e in spec.exits:
        uses.setdefault(e.when, []).append("exit")
    for s in spec.steps:
        for word, name in (("only if", s.when), ("unless", s.unless)):
            if name:
                uses.setdefault(name, []).append(f"{s.name}: {word}")
    return _table(["condition", "used by", "file"],
                  [[f"`{n}`", ", ".join(u), f"include/sql/conditions/{n}.sql"] for n, u in sorted(uses.items())])


def params_table(spec: JourneySpec) -> str:
    rows = [[f"`:{name}`", f"`{value}`"] for name, value in sorted(spec.params.items())]
    return _table(["param", "default"], rows)


def settings_table(spec: JourneySpec) -> str:
    rows = [["status", f"**{spec.status}**" + (" (every run is a dry run)" if spec.status == "draft" else "")],
            ["kind", spec.kind], ["schedule", human_schedule(spec)],
            ["first interval", spec.start_date.isoformat()],
            ["one enrollment per", f"`{spec.entry_key}` (clock: `{spec.entered_at}`)"],
            ["one active per customer", "yes" if spec.one_active_per_customer else "no"],
            ["holdout", f"{spec.holdout_percent:g}% of customers get no marketing messages"
             if spec.holdout_percent else "none"],
            ["conversion window", f"{human_duration(spec.complete_after)} after the last step"],
            ["owner", spec.owner]]
    if spec.audience_id:
        rows.append(["Meta audience", f"`{spec.audience_id}`"])
    return _table(["setting", "value"], rows)


def segment_sql_block(spec: JourneySpec) -> str:
    fence = "````" if "```" in spec.sql else "```"
    return (f"#### Segment SQL\n\n<details>\n<summary>show the SELECT of <code>{spec.path.name}</code></summary>\n\n"
            f"{fence}sql\n{spec.sql.strip()}\n{fence}\n\n</details>")


def journey_doc_md(spec: JourneySpec, fingerprint: str, draft_note: str = "") -> str:
    """The whole doc_md. `fingerprint` is lifecycle.fingerprint.journey_fingerprint(spec)."""
    parts = [f"### {spec.journey} ({spec.status})", " ".join(spec.description.split()) or "_No description._",
             settings_table(spec), "#### Steps", steps_table(spec)]
    if spec.exits:
        parts += ["#### Exits (checked in this order before the steps, every run)", exits_table(spec)]
    if spec.conditions:
        parts += ["#### Conditions", conditions_table(spec)]
    if spec.params:
        parts += ["#### Params (bound in the SELECT and its conditions)", params_table(spec)]
    parts += [segment_sql_block(spec),
              f"Segment file: `{spec.path.name}` (files hash `{fingerprint}`: segment, conditions, templates)"]
    return "\n\n".join(parts) + draft_note
