"""Product cards filled in when messages render, so the context holds no price.

A segment may put a product in its context as a *reference*: an object with `product_id` and no
`name`, plus any keys of its own, e.g. `jsonb_build_object('product_id', p.product_id, 'score', s)`.
When a batch is loaded to be sent (and when a message is previewed), each reference gets the
product's card as the shop has it then (`lifecycle.product_card`: name, image_url, price,
product_url), all of a batch's products in one query. So an email sent days after the run shows
the current price, and the enrollment stores a few bytes instead of four cards: at 1M customers
product_recommendations' contexts went from 955 to about 490 bytes, and enrolling and advancing
them got cheaper in proportion (benchmarks/README.md).

The reference's own keys win over the card's (a `score`, a `quantity`). A referenced product the
shop no longer has is left out of its list, and the task log says so: a product taken off the
catalogue is not advertised. A reference that is no list's item (upsell's `upgrade`,
replenishment's `product`) cannot be left out: `unfilled_references` names it, and the send skips
that message. An object that already has a `name` is a whole card, stored as the segment built it,
and is left as it is (what an order confirmation shows was bought). The context itself is a row,
never a reference, even when it has a `product_id` column (upsell, replenishment).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from lifecycle.config import SHOP
from lifecycle.ids import column_type

log = logging.getLogger(__name__)

PRODUCTS = "shop.products"


def is_reference(value: Any) -> bool:
    return isinstance(value, dict) and value.get("product_id") is not None and "name" not in value


def _references(context: Any) -> list[tuple[dict, list | None]]:
    """Each reference in a context's values (the context itself is a row, not a reference), with
    the list that holds it (None: it is in no list, so it cannot be left out)."""
    found: list[tuple[dict, list | None]] = []

    def walk(value: Any, holder: list | None) -> None:
        if is_reference(value):
            found.append((value, holder))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item, None)
        elif isinstance(value, list):
            for item in value:
                walk(item, value)

    for value in (context.values() if isinstance(context, dict) else ()):
        walk(value, None)
    return found


def unfilled_references(context: Any) -> list[str]:
    """The product ids of references in `context` still without a card after
    `fill_product_cards`: products the shop no longer has, named where no list could leave them out."""
    return sorted({str(reference["product_id"]) for reference, _ in _references(context)})


def product_cards(conn: sa.Connection, product_ids: Iterable[str]) -> dict[str, dict]:
    """The current card of each product (by its id as text) the shop has."""
    ids = sorted(set(product_ids))
    if not ids:
        return {}
    rows = conn.execute(  # the ids in the shop's own type: its primary key is used
        sa.text(f"SELECT p.product_id::text, lifecycle.product_card(p, :shop_url) FROM {PRODUCTS} p "
                f"WHERE p.product_id = ANY (CAST(:ids AS {column_type(conn, PRODUCTS, 'product_id')}[]))"),
        {"ids": ids, "shop_url": SHOP["base_url"]},
    ).all()
    return dict(rows)


def fill_product_cards(conn: sa.Connection, contexts: Iterable[Any]) -> int:
    """Give every product reference in `contexts` (dicts, changed in place) its current card;
    returns how many references named a product the shop no longer has (those are left out of
    their lists)."""
    references = [found for context in contexts if context for found in _references(context)]
    if not references:
        return 0
    cards = product_cards(conn, (str(reference["product_id"]) for reference, _ in references))
    missing: set[str] = set()
    unfilled = 0  # references to a product the shop no longer has
    gone: set[int] = set()  # the references to leave out, by identity
    holders: dict[int, list] = {}  # the lists holding them
    for reference, holder in references:
        card = cards.get(str(reference["product_id"]))
        if card is not None:
            for key, value in card.items():
                reference.setdefault(key, value)
            continue
        missing.add(str(reference["product_id"]))
        unfilled += 1
        if holder is not None:
            gone.add(id(reference))
            holders[id(holder)] = holder
    if missing:
        log.warning("products %s are no longer in %s: left out of the messages that named them",
                    ", ".join(sorted(missing)), PRODUCTS)
    for holder in holders.values():
        holder[:] = [item for item in holder if id(item) not in gone]
    return unfilled
