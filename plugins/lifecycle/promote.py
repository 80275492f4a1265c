"""`lifecycle promote <journey>`: make a draft journey live by setting `status: live` in its
segment file's header. Only that line changes (or one line is added after `journey:`); every
other byte of the file stays as the analyst wrote it, comments included."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from lifecycle.spec import HEADER, SpecError, load_spec

# A top-level `status:` line of the header: its value, and an optional trailing comment.
STATUS_LINE = re.compile(r"^status:[ \t]*(?P<value>[^#\n]*?)[ \t]*(?P<comment>#[^\n]*)?$", re.M)
JOURNEY_LINE = re.compile(r"^journey:[^\n]*\n", re.M)


class PromoteError(ValueError):
    """The file cannot be promoted; the message says why and that nothing was changed."""


@dataclass(frozen=True)
class Promotion:
    journey: str
    path: Path
    was: str  # what the header said: 'draft', or 'draft: the header had no status: key'
    changed: bool

    def describe(self) -> str:
        if not self.changed:
            return f"{self.journey} is already live ({self.path}); nothing changed"
        return (f"promoted {self.journey}: {self.path} now says `status: live` (was {self.was}). "
                "Its next run delivers for real once Airflow has re-parsed the file; "
                "runs before that stay dry runs.")


def promote(path: Path) -> Promotion:
    """Rewrite the header of a valid segment file to `status: live`; raise PromoteError if it
    cannot be done safely (the file is broken, or the header is not laid out as expected)."""
    try:
        spec = load_spec(path)
    except SpecError as exc:
        raise PromoteError(f"{path.name} is broken, not promoted (file unchanged): " + "; ".join(exc.problems)) from exc
    if spec.status == "live":
        return Promotion(spec.journey, path, "live", changed=False)
    text = path.read_text(encoding="utf-8")
    new_text, was = _with_live_status(text, path)
    _check_rewrite(new_text, path)
    path.write_text(new_text, encoding="utf-8")
    return Promotion(spec.journey, path, was, changed=True)


def _with_live_status(text: str, path: Path) -> tuple[str, str]:
    """The file text with the header's status set to live, and what it was before."""
    header = HEADER.match(text)
    start, end = header.span("yaml")
    block = text[start:end]
    found = list(STATUS_LINE.finditer(block))
    if len(found) > 1:
        raise PromoteError(f"{path.name}: the header has {len(found)} `status:` lines; keep one (file unchanged)")
    if found:
        line = found[0]
        value_start, value_end = line.span("value")
        block = block[:value_start] + "live" + block[value_end:]
        was = line["value"].strip("'\" ") or "draft"
    else:  # no key: draft by default; add the line right after `journey:` (or first in the header)
        journey_line = JOURNEY_LINE.search(block)
        at = journey_line.end() if journey_line else 0
        block = block[:at] + "status: live\n" + block[at:]
        was = "draft: the header had no status: key"
    return text[:start] + block + text[end:], was


def _check_rewrite(new_text: str, path: Path) -> None:
    """The rewritten header must still parse and say live (a status inside a flow mapping or a
    multi-line value would not): otherwise leave the file alone."""
    header = HEADER.match(new_text)
    try:
        parsed = yaml.safe_load(header["yaml"]) if header else None
    except yaml.YAMLError:
        parsed = None
    if not isinstance(parsed, dict) or parsed.get("status") != "live":
        raise PromoteError(f"{path.name}: could not set `status: live` in this header safely (file unchanged); "
                           "edit the status: line by hand")
