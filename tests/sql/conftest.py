"""Given/expect tests for the analyst SQL (the dbt `unit_tests` idea): a few shop rows in, the
rows a segment selects (or the enrollments a condition holds for) out, through the engine's
own functions, on an empty migrated shop on the embedded PostgreSQL.

    def test_an_abandoned_cart_is_selected(sql):
        sql.given("carts", {"cart_id": 1, "customer_id": 7, "updated_at": AS_OF - 2 * HOUR})
        sql.given("cart_items", {"cart_id": 1, "product_id": 3})
        assert sql.keys("cart_abandonment", as_of=AS_OF) == {"1"}

Rows name only the columns the rule is about: `given` fills the other NOT NULL columns, and
creates a customer or product a row refers to when the test did not (a plain one: address
`c<id>@example.com`, email consent opted in, product price 10.00). The database is a copy of a
session template, emptied between tests (a TRUNCATE, not a new database).
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from lifecycle.config import SEGMENTS_DIR
from lifecycle.exits import evaluate_exits
from lifecycle.run_context import RunContext
from lifecycle.spec import Exit, JourneySpec, load_spec
from lifecycle.stage import drop_stage, stage_segment, stage_table

AS_OF = datetime(2026, 11, 20, tzinfo=UTC)  # every case's run ends here unless it says otherwise
HOUR, DAY = timedelta(hours=1), timedelta(days=1)
LONG_AGO = AS_OF - 400 * DAY

# Columns `given` fills when a row leaves them out (NOT NULL in include/sql/shop/schema.sql).
DEFAULTS: dict[str, dict[str, Any]] = {
    "customers": {"email": lambda r: f"c{r['customer_id']}@example.com", "created_at": LONG_AGO},
    "consents": {"channel": "email", "status": "opted_in", "updated_at": LONG_AGO},
    "products": {"sku": lambda r: f"SKU-{r['product_id']}", "name": lambda r: f"Product {r['product_id']}",
                 "category": "apparel", "price": 10, "product_type": "soft"},
    "product_links": {"kind": "cross_sell"},
    "page_views": {"session_id": "s1", "seconds_on_page": 30},
    "carts": {"created_at": lambda r: r["updated_at"]},
    "cart_items": {"quantity": 1, "unit_price": 10},
    "orders": {"status": "delivered", "total": 10, "currency": "EUR"},
    "order_items": {"quantity": 1, "unit_price": 10},
    "reviews": {"rating": 5},
    "referrals": {"referred_email": "friend@example.com"},
    "push_subscriptions": {"endpoint": "https://push.example.com/x", "p256dh": "k", "auth": "a"},
    "engagement_events": {"channel": "email"},
}
REFERS_TO_CUSTOMER = {"consents": "customer_id", "page_views": "customer_id", "carts": "customer_id",
                      "orders": "customer_id", "reviews": "customer_id", "push_subscriptions": "customer_id",
                      "referrals": "referrer_customer_id"}
REFERS_TO_PRODUCT = {"page_views", "cart_items", "order_items", "reviews"}
SHOP_TABLES = ("engagement_events", "push_subscriptions", "referrals", "reviews", "order_items", "orders",
               "cart_items", "carts", "page_views", "product_links", "products", "consents", "customers")
LIFECYCLE_TABLES = ("messages", "coupons", "conversions", "enrollments", "runs", "quarantine", "suppressions",
                    "preference_choices")


@dataclasses.dataclass
class Enrollment:
    """An active enrollment a condition is checked against (lifecycle.enrollments)."""

    key: str
    customer_id: int | str  # the shop's type: text ids on a text shop
    entered_at: datetime
    context: dict = dataclasses.field(default_factory=dict)
    enrolled_at: datetime | None = None  # default: entered_at


class ShopSQL:
    """An empty shop with the lifecycle schema; rows in, the engine's selection out."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._runs = 0

    # -- given

    def given(self, table: str, *rows: dict) -> None:
        """Insert `rows` into shop.<table> (lifecycle.<table> for a `lifecycle.` prefix)."""
        qualified = table if "." in table else f"shop.{table}"
        name = qualified.split(".", 1)[1]
        filled = [self._filled(name, r) for r in rows]
        if qualified.startswith("shop."):
            self._referenced(name, filled)
        with self.engine.begin() as conn:
            for row in filled:
                columns = ", ".join(row)
                values = ", ".join(f"CAST(:{c} AS jsonb)" if isinstance(row[c], dict | list) else f":{c}" for c in row)
                conn.execute(sa.text(f"INSERT INTO {qualified} ({columns}) VALUES ({values})"),
                             {c: json.dumps(v, default=str) if isinstance(v, dict | list) else v for c, v in row.items()})

    def customer(self, customer_id: int | str, *, consent: str | None = "opted_in", **columns) -> None:
        """A customer, with an email consent row (`consent=None`: none; 'opted_out')."""
        self.given("customers", {"customer_id": customer_id, **columns})
        if consent:
            self.given("consents", {"customer_id": customer_id, "status": consent})

    def order(self, order_id: int | str, customer_id: int | str, ordered_at: datetime, *products: int | str,
              **columns) -> None:
        """An order (delivered, 10.00 unless `columns` say otherwise) with one line per product."""
        self.given("orders", {"order_id": order_id, "customer_id": customer_id, "ordered_at": ordered_at, **columns})
        self.given("order_items", *({"order_id": order_id, "product_id": p} for p in products))

    def _filled(self, table: str, row: dict) -> dict:
        out = dict(row)
        for column, default in DEFAULTS.get(table, {}).items():
            if column not in out:
                out[column] = default(out) if callable(default) else default
        return out

    def _referenced(self, table: str, rows: list[dict]) -> None:
        """Create the plain customers and products the rows refer to and the test did not."""
        with self.engine.connect() as conn:
            if table in REFERS_TO_CUSTOMER:
                have = set(conn.execute(sa.text("SELECT customer_id FROM shop.customers")).scalars())
                column = REFERS_TO_CUSTOMER[table]
                missing = sorted({r[column] for r in rows if r.get(column) is not None} - have)
            else:
                missing = []
            if table in REFERS_TO_PRODUCT:
                have = set(conn.execute(sa.text("SELECT product_id FROM shop.products")).scalars())
                products = sorted({r["product_id"] for r in rows if r.get("product_id") is not None} - have)
            else:
                products = []
        for customer_id in missing:
            self.customer(customer_id) if table != "consents" else self.given("customers", {"customer_id": customer_id})
        if products:
            self.given("products", *({"product_id": p} for p in products))

    # -- segments

    def spec(self, journey: str, **changes) -> JourneySpec:
        spec = load_spec(SEGMENTS_DIR / f"{journey}.sql")
        return dataclasses.replace(spec, **changes) if changes else spec

    def select(self, journey: str, as_of: datetime = AS_OF, start: datetime | None = None,
               params: dict | None = None) -> list[dict]:
        """The rows the journey's segment selects for the run ending at `as_of` (the engine's
        stage_segment: the segment file with its bound parameters; `params` override the header's)."""
        spec = self.spec(journey)
        if params:
            spec = dataclasses.replace(spec, params={**spec.params, **params})
        start = start or as_of - {"hourly": HOUR, "daily": DAY, "weekly": 7 * DAY}[spec.schedule]
        self._runs += 1
        run = RunContext(journey, f"sql-test-{self._runs}", "live", start, as_of)
        stage_segment(self.engine, spec, run)
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(sa.text(f"SELECT * FROM {stage_table(run)} ORDER BY _row")).mappings().all()
        finally:
            drop_stage(self.engine, run)
        return [{k: v for k, v in r.items() if k != "_row"} for r in rows]

    def keys(self, journey: str, **kwargs) -> set[str]:
        """The enrollment keys of the selected rows, as text (what lifecycle.enrollments stores)."""
        spec = self.spec(journey)
        return {str(r[spec.entry_key]) for r in self.select(journey, **kwargs)}

    # -- conditions

    def enroll(self, journey: str, *enrollments: Enrollment) -> dict[str, int]:
        """Active live enrollments of `journey`: key -> enrollment_id."""
        ids = {}
        with self.engine.begin() as conn:
            for e in enrollments:
                ids[e.key] = conn.execute(sa.text(
                    "INSERT INTO lifecycle.enrollments (journey, mode, enrollment_key, customer_id, entered_at, "
                    "enrolled_at, enrolled_run_id, context) VALUES (:j, 'live', :k, :c, :t, :at, 'sql-test', "
                    "CAST(:ctx AS jsonb)) ON CONFLICT (journey, mode, enrollment_key) "  # enrolled by an earlier call
                    "DO UPDATE SET enrollment_key = EXCLUDED.enrollment_key RETURNING enrollment_id"),
                    {"j": journey, "k": e.key, "c": str(e.customer_id), "t": e.entered_at,
                     "at": e.enrolled_at or e.entered_at, "ctx": json.dumps(e.context, default=str)}).scalar_one()
        return ids

    def holds(self, condition: str, *enrollments: Enrollment, as_of: datetime = AS_OF,
              journey: str = "win_back", params: dict | None = None) -> dict[str, tuple]:
        """Apply `condition` as the one exit rule of `journey` (whose header gives the parameters)
        to `enrollments`, with the engine's evaluate_exits; return key -> (exited_at, order_id,
        revenue) of the enrollments it holds for (order and revenue: the conversion it credits).
        Active enrollments already in the journey (`enroll`: to give them coupons or messages
        first, or from an earlier call) take part too; those an earlier call exited do not."""
        # A rule the journey names by `reason:` (a shared condition with params) is that exit rule.
        own = next((e for e in self.spec(journey).exits if e.reason == condition), None)
        rule = (dataclasses.replace(own, status="converted", message_step=None, channel=None, template=None, coupon=None)
                if own else Exit(when=condition, status="converted", message_step=None, channel=None, template=None))
        spec = self.spec(journey, exits=(rule,))
        if params:
            spec = dataclasses.replace(spec, params={**spec.params, **params})
        self.enroll(journey, *enrollments)
        self._runs += 1
        evaluate_exits(self.engine, spec, RunContext(journey, f"sql-test-{self._runs}", "live", as_of - HOUR, as_of))
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT e.enrollment_key, e.exited_at, c.order_id, c.revenue FROM lifecycle.enrollments e "
                "JOIN lifecycle.conversions c USING (enrollment_id) WHERE e.journey = :j AND c.condition = :c"),
                {"j": journey, "c": condition}).all()
        return {k: (at, order_id, revenue) for k, at, order_id, revenue in rows}


def _emptied(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE " + ", ".join(f"shop.{t}" for t in SHOP_TABLES) + ", "
                             + ", ".join(f"lifecycle.{t}" for t in LIFECYCLE_TABLES) + " CASCADE")


@pytest.fixture()
def sql(empty_shop) -> ShopSQL:
    """The empty shop, emptied again after the test."""
    yield ShopSQL(empty_shop)
    _emptied(empty_shop)


@pytest.fixture()
def text_sql(empty_text_shop) -> ShopSQL:
    """The empty text-id shop, emptied again after the test."""
    yield ShopSQL(empty_text_shop)
    _emptied(empty_text_shop)
