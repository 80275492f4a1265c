"""lifecycle.products: a context's product references get the shop's current card when the
message is loaded to be sent (send.load_batch) or previewed; whole cards are left as stored."""

from __future__ import annotations

import copy
import logging
from datetime import UTC, datetime
from types import SimpleNamespace

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifecycle import send
from lifecycle.products import fill_product_cards, unfilled_references

SHOP_URL = "https://shop.example.com"  # SHOP["base_url"] in the tests' settings


def fill(sql, *contexts: dict) -> int:
    with sql.engine.connect() as conn:
        return fill_product_cards(conn, contexts)


def test_a_reference_gets_todays_card_and_keeps_its_own_keys(sql):
    sql.given("products", {"product_id": 3, "sku": "MUG", "name": "Mug", "price": 12.5, "image_url": "https://i/mug.png"},
              {"product_id": 4, "sku": "CAP", "name": "Cap", "price": 20})
    context = {"products": [{"product_id": 3, "score": 7}, {"product_id": 4, "score": 2, "price": "kept"}]}
    assert fill(sql, context) == 0
    assert context["products"] == [
        {"product_id": 3, "score": 7, "name": "Mug", "price": 12.5, "image_url": "https://i/mug.png",
         "product_url": f"{SHOP_URL}/p/MUG"},
        {"product_id": 4, "score": 2, "price": "kept", "name": "Cap", "image_url": None,
         "product_url": f"{SHOP_URL}/p/CAP"},
    ]
    with sql.engine.begin() as conn:  # the price changes after the run, before the send
        conn.exec_driver_sql("UPDATE shop.products SET price = 9.99 WHERE product_id = 3")
    later = {"products": [{"product_id": 3, "score": 7}]}
    fill(sql, later)
    assert later["products"][0]["price"] == 9.99


def test_whole_cards_and_other_values_are_left_as_stored(sql):
    sql.given("products", {"product_id": 1, "name": "Now", "price": 30})
    stored = {"product_id": 1, "name": "Then", "price": 25}  # what an order confirmation showed
    context = {"items": [dict(stored)], "order_id": 1, "note": None, "tags": ["a", 1]}
    fill(sql, context)
    assert context == {"items": [stored], "order_id": 1, "note": None, "tags": ["a", 1]}


def test_references_anywhere_in_the_context_one_query_for_the_batch(sql):
    sql.given("products", *({"product_id": p, "name": f"P{p}"} for p in (1, 2, 3)))
    first = {"upgrade": {"product_id": 2}, "lines": [{"bundle": [{"product_id": 1}]}]}
    second = {"products": [{"product_id": 3}, {"product_id": 1}]}
    statements = []
    with sql.engine.connect() as conn:
        from sqlalchemy import event

        event.listen(conn, "before_cursor_execute", lambda *args: statements.append(args[2]))
        fill_product_cards(conn, [first, second, None])
    assert first["upgrade"]["name"] == "P2" and first["lines"][0]["bundle"][0]["name"] == "P1"
    assert [p["name"] for p in second["products"]] == ["P3", "P1"]
    assert sum("lifecycle.product_card" in s for s in statements) == 1


def test_a_product_gone_from_the_shop_is_left_out_and_logged(sql, caplog):
    sql.given("products", {"product_id": 1, "name": "Kept"})
    context = {"products": [{"product_id": 9, "score": 5}, {"product_id": 1, "score": 4}]}
    other = {"products": [{"product_id": 9}]}
    with caplog.at_level(logging.WARNING, logger="lifecycle.products"):
        assert fill(sql, context, other) == 2
    assert [p["product_id"] for p in context["products"]] == [1]
    assert other["products"] == []
    assert "products 9 are no longer in shop.products" in caplog.text


def test_a_null_product_id_is_no_reference(sql):
    context = {"products": [{"product_id": None}], "total": 3}
    assert fill(sql, context, {}) == 0
    assert context == {"products": [{"product_id": None}], "total": 3}


def test_the_context_is_a_row_not_a_reference_even_with_a_product_id(sql):
    """upsell and replenishment rows have a product_id column: the row gets no card, the
    references in it (the item, the upgrade, the product) do."""
    sql.given("products", *({"product_id": p, "name": f"P{p}", "price": 10 * p} for p in (1, 2)))
    context = {"product_id": 1, "upgrade_product_id": 2, "price_difference": 10,
               "item": {"product_id": 1, "price": 8, "quantity": 2}, "upgrade": {"product_id": 2}}
    assert fill(sql, context) == 0
    assert set(context) == {"product_id", "upgrade_product_id", "price_difference", "item", "upgrade"}
    assert (context["item"]["name"], context["item"]["price"], context["item"]["quantity"]) == ("P1", 8, 2)
    assert (context["upgrade"]["name"], context["upgrade"]["price"]) == ("P2", 20)
    assert unfilled_references(context) == []


def test_a_gone_product_outside_a_list_stays_a_reference_and_its_message_is_skipped(sql):
    sql.given("products", {"product_id": 1, "name": "Kept"})
    context = {"product_id": 1, "item": {"product_id": 1}, "upgrade": {"product_id": 9},
               "suggested": [{"product_id": 8}, {"product_id": 1}]}
    assert fill(sql, context) == 2
    assert context["upgrade"] == {"product_id": 9} and [p["product_id"] for p in context["suggested"]] == [1]
    assert unfilled_references(context) == ["9"]  # the list's gone product was left out instead
    settles: list = []
    row = SimpleNamespace(message_id=7, journey="upsell", step="offer", channel="email", template="upsell/offer",
                          context=context)
    assert send._prepare(row, SimpleNamespace(steps=[]), datetime(2026, 11, 20, tzinfo=UTC), False, settles, {},
                         None) is None
    assert settles == [(7, "skipped", "product 9 is no longer in the shop", None)]


# -- any context (Hypothesis): references anywhere below the top, cards, plain values, gone products

PRODUCTS_IN_SHOP = (1, 2, 3)
references = st.builds(  # own keys: a score, or a price of its own (a cart's), which wins over the card's
    lambda pid, own: {"product_id": pid, **own}, st.sampled_from((1, 2, 3, 8, 9)),
    st.dictionaries(st.sampled_from(["score", "price"]), st.integers(0, 9), max_size=2))
cards = st.builds(lambda pid: {"product_id": pid, "name": f"stored {pid}", "price": 1}, st.sampled_from((1, 9)))
leaves = st.one_of(st.none(), st.integers(), st.text(max_size=3), references, cards)
values = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.sampled_from("abcde"), inner, max_size=3)),
                      max_leaves=12)
contexts = st.dictionaries(st.sampled_from(["products", "item", "lines", "note", "product_id"]), values, max_size=4)


def is_reference(value) -> bool:
    return isinstance(value, dict) and value.get("product_id") is not None and "name" not in value


def is_gone(value) -> bool:
    return is_reference(value) and value["product_id"] not in PRODUCTS_IN_SHOP


def expected(value):
    """What fill_product_cards makes of a value below the context's top, by the rules the module
    documents: a reference gets its card under its own keys; a gone product's reference is left out
    of its list, and stays as it is anywhere else; everything else is left as stored."""
    if is_reference(value):
        if is_gone(value):
            return value
        p = value["product_id"]
        return {"name": f"P{p}", "image_url": None, "price": 10, "product_url": f"{SHOP_URL}/p/SKU-{p}", **value}
    if isinstance(value, dict):
        return {k: expected(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expected(v) for v in value if not is_gone(v)]
    return value


def references_left(value) -> set[str]:
    if is_reference(value):
        return {str(value["product_id"])}
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return set().union(set(), *(references_left(v) for v in items))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(contexts, min_size=1, max_size=3))
def test_any_context_every_reference_gets_its_card_or_is_left_out(sql, batch):
    with sql.engine.begin() as conn:
        if not conn.execute(sa.text("SELECT count(*) FROM shop.products")).scalar():
            conn.execute(sa.text("INSERT INTO shop.products (product_id, sku, name, category, price, product_type) "
                                 "SELECT p, 'SKU-' || p, 'P' || p, 'apparel', 10, 'soft' FROM unnest(CAST(:ids AS bigint[])) p"),
                         {"ids": list(PRODUCTS_IN_SHOP)})
    want = [{k: expected(v) for k, v in context.items()} for context in batch]  # the context is a row
    filled = copy.deepcopy(batch)
    fill(sql, *filled)
    assert filled == want
    for context in filled:  # unfilled: the gone products outside any list, nothing else
        assert unfilled_references(context) == sorted(set().union(*(references_left(v) for v in context.values())))
        assert set(unfilled_references(context)) <= {"8", "9"}
