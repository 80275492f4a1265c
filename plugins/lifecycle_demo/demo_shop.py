"""A deterministic synthetic shop: the demo warehouse every segment, test and example reads.

`generate(engine, anchor)` fills the `shop` schema with a seeded, realistic history that
ends just before `anchor`, and plants hand-made customers whose journeys play out in
the five days before it (see the `plant_*` methods and `Planted`). The same anchor, seed,
customer count and block size give byte-identical tables, whatever the number of workers:
all randomness comes from seeded `random.Random` streams (one per block of customers) and
seeded Faker instances, and no clock is ever read.

Customers are simulated in blocks (`BLOCK_SIZE`) by worker processes, each COPYing its
blocks over a connection of its own; keys and indexes are built after the load (see
`generate`). Block 0 continues the planted cases' stream, so a shop that fits in it is what
the sequential generator always made. Internally every time is an integer number of
seconds relative to the anchor (always negative), so "A - 2h" is simply `-2 * HOUR`.
"""

from __future__ import annotations

import calendar
import functools
import hashlib
import io
import itertools
import logging
import multiprocessing
import os
import random
import time
import unicodedata
from array import array
from base64 import urlsafe_b64encode
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from math import floor as _floor
from math import log as _log

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from faker import Faker
from faker.decode import unidecode
from sqlalchemy.engine import Engine

from lifecycle.schema import create_shop_schema

MINUTE, HOUR, DAY = 60, 3600, 86400
log = logging.getLogger(__name__)

# Planted customers are reachable as planted.<case>@example.com (except cart_invalid_email).
PLANTED_EMAIL_DOMAIN = "example.com"
# Only reserved example domains (RFC 2606), so no demo mail can reach a real person.
_EMAIL_DOMAINS = ("example.com", "example.org", "example.net")

_CUSTOMER_WINDOW = 400 * DAY  # accounts opened over the last ~400 days
_ORDER_WINDOW = 240 * DAY  # order history
_SESSION_WINDOW = 60 * DAY  # page views and carts


class ShopNotEmptyError(RuntimeError):
    """generate() only fills an empty shop; it never mixes with existing rows."""


# --------------------------------------------------------------------------- catalogue


@dataclass(frozen=True)
class Product:
    product_id: int
    sku: str
    name: str
    category: str
    brand: str
    price_cents: int
    product_type: str  # soft / hard / consumable
    tier: int
    pack_units: int | None = None
    units_per_day: float | None = None

    @property
    def pack_days(self) -> float:
        """How long one pack of a consumable lasts."""
        return self.pack_units / self.units_per_day


# category -> (sku code, product_type, [(item, brand, tier-1 price in cents), ...])
_CATEGORIES = {
    "clothing": ("CLO", "soft", [("Organic Cotton T-Shirt", "Fjord & Co", 1900), ("Merino Hoodie", "Northwind Basics", 4900)]),
    "shoes": ("SHO", "soft", [("Everyday Sneakers", "Stride Lab", 5900), ("Trail Running Shoes", "Stride Lab", 8900)]),
    "cosmetics": ("COS", "soft", [("Hydrating Face Cream", "Lumen Skin", 1500), ("Vitamin C Serum", "Lumen Skin", 2400)]),
    "jewellery": ("JEW", "soft", [("Sterling Silver Necklace", "Aurelia", 3900), ("Stud Earrings", "Aurelia", 2900)]),
    "furniture": ("FUR", "hard", [("Oak Side Table", "Holm Living", 8900), ("Lounge Chair", "Holm Living", 19900)]),
    "household": ("HOU", "hard", [("Cast Iron Pan", "Kettle & Crumb", 3400), ("Electric Kettle", "Kettle & Crumb", 2900)]),
    "sports equipment": ("SPO", "hard", [("Yoga Mat", "Peak Motion", 2500), ("Adjustable Dumbbells", "Peak Motion", 7900)]),
}
# Consumables climb tiers by pack size, so the upsell is the bigger pack.
# category -> (sku code, [(item, brand, tier-1 price in cents, tier-1 pack units, unit, units per day), ...])
_CONSUMABLES = {
    "coffee capsules": ("COF", [("Espresso Capsules", "Crema Club", 450, 10, "capsules", 2.0),
                                ("Lungo Capsules", "Crema Club", 490, 10, "capsules", 1.5)]),
    "vitamins": ("VIT", [("Vitamin D3 Tablets", "Vitalis", 799, 30, "tablets", 1.0),
                         ("Omega-3 Capsules", "Vitalis", 1299, 30, "capsules", 2.0)]),
    "pet food": ("PET", [("Adult Dry Dog Food", "Happy Paws", 1499, 8, "daily portions", 1.0),
                         ("Wet Cat Food", "Happy Paws", 999, 12, "pouches", 2.0)]),
}
_TIER_LABELS = {1: "Essential", 2: "Classic", 3: "Signature"}
_TIER_PRICE_FACTOR = {1: 1.0, 2: 1.8, 3: 3.0}
_PACK_FACTOR = {1: 1, 2: 3, 3: 6}
_PACK_PRICE_FACTOR = {1: 1.0, 2: 2.7, 3: 5.0}  # bulk packs are cheaper per unit
# Which category each category's products are cross-sold into.
_CROSS_SELL = {
    "clothing": "shoes", "shoes": "clothing", "cosmetics": "jewellery", "jewellery": "cosmetics",
    "furniture": "household", "household": "furniture", "sports equipment": "vitamins",
    "vitamins": "sports equipment", "coffee capsules": "household", "pet food": "household",
}


def _shelf_price(cents: float) -> int:
    """Round to a .99 / .49 shelf price."""
    return max(99, int(cents // 50) * 50 + 49) if cents < 1000 else int(cents // 100) * 100 + 99


def build_catalogue() -> list[Product]:
    """The shop's 60 products (fixed: the catalogue does not depend on the seed)."""
    products: list[Product] = []
    next_id = itertools.count(1)
    for category, (code, kind, items) in _CATEGORIES.items():
        for item_no, (item, brand, price) in enumerate(items, 1):
            for tier in (1, 2, 3):
                sku = f"{code}-{item_no:02d}-T{tier}"
                products.append(Product(next(next_id), sku, f"{_TIER_LABELS[tier]} {item}", category, brand,
                                        _shelf_price(price * _TIER_PRICE_FACTOR[tier]), kind, tier))
    for category, (code, items) in _CONSUMABLES.items():
        for item_no, (item, brand, price, pack, unit, per_day) in enumerate(items, 1):
            for tier in (1, 2, 3):
                units = pack * _PACK_FACTOR[tier]
                sku = f"{code}-{item_no:02d}-T{tier}"
                products.append(Product(next(next_id), sku, f"{item}, {units} {unit}", category, brand,
                                        _shelf_price(price * _PACK_PRICE_FACTOR[tier]), "consumable", tier,
                                        units, per_day))
    return products


def build_product_links(products: list[Product]) -> list[tuple[int, int, str]]:
    """Upsell to the next tier of the same category; cross-sell to the same tier of the partner category."""
    links = []
    for p in products:
        for q in products:
            if q.category == p.category and q.tier == p.tier + 1:
                links.append((p.product_id, q.product_id, "upsell"))
            elif q.category == _CROSS_SELL[p.category] and q.tier == p.tier:
                links.append((p.product_id, q.product_id, "cross_sell"))
    return links


def image_url(sku: str) -> str:
    return f"https://cdn.shop.example.com/img/{sku}.jpg"


# --------------------------------------------------------------------------- countries


@dataclass(frozen=True)
class Country:
    code: str
    locale: str
    timezones: tuple[str, ...]
    weight: int
    dial: str  # country calling code
    mobile_prefixes: tuple[str, ...]  # national mobile prefixes that pass libphonenumber validation
    subscriber_digits: int
    delivery_days: tuple[int, int]  # from ordering to the doorstep


# UK, US and AU numbers use the ranges their regulators reserve for fiction.
COUNTRIES = (
    Country("DE", "de_DE", ("Europe/Berlin",), 25, "49", ("151", "160", "170", "176"), 8, (2, 3)),
    Country("FR", "fr_FR", ("Europe/Paris",), 12, "33", ("6",), 8, (3, 4)),
    Country("GB", "en_GB", ("Europe/London",), 15, "44", ("7700900",), 3, (3, 5)),
    Country("US", "en_US", ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles"),
            18, "1", ("212555", "312555", "415555", "206555"), 4, (5, 8)),
    Country("BR", "pt_BR", ("America/Sao_Paulo", "America/Manaus"), 6, "55", ("119", "219", "319"), 8, (6, 8)),
    Country("NL", "nl_NL", ("Europe/Amsterdam",), 8, "31", ("6",), 8, (2, 3)),
    Country("ES", "es_ES", ("Europe/Madrid", "Atlantic/Canary"), 7, "34", ("6",), 8, (3, 5)),
    Country("JP", "ja_JP", ("Asia/Tokyo",), 5, "81", ("90", "80"), 8, (5, 8)),
    Country("AU", "en_AU", ("Australia/Sydney", "Australia/Melbourne", "Australia/Brisbane", "Australia/Perth"),
            4, "61", ("491570",), 3, (6, 8)),
)
_COUNTRY = {c.code: c for c in COUNTRIES}


# --------------------------------------------------------------------------- planted cases


@dataclass(frozen=True)
class PlantedCase:
    """One hand-made situation; `order_ids` are all the customer's orders, oldest first."""

    name: str
    description: str
    customer_id: int
    email: str
    cart_id: int | None = None
    order_ids: tuple[int, ...] = ()
    review_id: int | None = None
    product_id: int | None = None  # the product the case is about (viewed, replenished, upsold...)
    details: tuple[tuple[str, object], ...] = ()  # anything else a test needs, as (name, value) pairs


class Planted(dict[str, PlantedCase]):
    """Case name -> PlantedCase, in planting order."""

    @property
    def customer_ids(self) -> set[int]:
        return {case.customer_id for case in self.values()}


# --------------------------------------------------------------------------- COPY buffers

_COLUMNS = {  # FK order: a table only references tables listed before it
    "products": "product_id, sku, name, category, brand, price, image_url, product_type, pack_units, units_per_day, tier",
    "product_links": "product_id, linked_product_id, kind",
    "customers": "customer_id, email, phone, first_name, last_name, country, timezone, locale, birthday, created_at",
    "consents": "customer_id, channel, status, double_opt_in_at, source, updated_at",
    "push_subscriptions": "subscription_id, customer_id, endpoint, p256dh, auth, created_at, revoked_at",
    "orders": "order_id, customer_id, ordered_at, status, total, currency, coupon_code, shipped_at, delivered_at, shipping_country",
    "order_items": "order_id, product_id, quantity, unit_price",
    "carts": "cart_id, customer_id, created_at, updated_at",
    "cart_items": "cart_id, product_id, quantity, unit_price, added_at",
    "page_views": "view_id, customer_id, anonymous_id, session_id, product_id, category, viewed_at, seconds_on_page",
    "reviews": "review_id, order_id, product_id, customer_id, rating, created_at",
    "referrals": "referral_id, referrer_customer_id, referred_email, created_at, converted_order_id",
}
_NULL = "\\N"
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
# Ids drawn from a per-block sequence: a block numbers its orders, carts, views... from 1 and
# learns where its range starts (the ids the blocks before it used) only once it is generated.
_ID_KINDS = ("order", "cart", "view", "review", "referral", "subscription")
# table -> (column position, id kind) of its block-local ids; such rows stay tuples until finish()
_LOCAL_IDS = {
    "push_subscriptions": ((0, "subscription"),),
    "orders": ((0, "order"),),
    "order_items": ((0, "order"),),
    "carts": ((0, "cart"),),
    "cart_items": ((0, "cart"),),
    "page_views": ((0, "view"),),
    "reviews": ((0, "review"), (1, "order")),
    "referrals": ((0, "referral"), (4, "order")),
}
# A push subscription's keys derive from its final id: random subscriptions get them in finish().
_DERIVED_KEY = object()


def _text(value: str) -> str:
    """Free text (Faker names) escaped for COPY's text format; generated values never need it."""
    return value.translate(_COPY_ESCAPES)


def _line(values) -> str:
    # Inline conversion: this runs for every field of ~22M rows at 1M customers.
    return "\t".join([_NULL if v is None else v if v.__class__ is str else str(v) for v in values])


# Tables whose only local id leads the row: kept as (local id, rest of the line), the hot path.
_LEADING_ID = {table: positions[0][1] for table, positions in _LOCAL_IDS.items()
               if len(positions) == 1 and table != "push_subscriptions"}


class _CopyBuffer:
    """One block's rows per table, in COPY text format once finish() has the block's id offsets."""

    def __init__(self) -> None:
        self.lines: dict[str, list] = {table: [] for table in _COLUMNS}

    def add(self, table: str, *values) -> None:
        if table in _LEADING_ID:
            self.lines[table].append((values[0], _line(values[1:])))
        else:
            self.lines[table].append(values if table in _LOCAL_IDS else _line(values))

    def finish(self, offsets: dict[str, int], seed: int) -> dict[str, list[str]]:
        """The block's COPY lines, its local ids shifted by `offsets` (id kind -> ids used before it)."""
        for table, kind in _LEADING_ID.items():
            offset = offsets[kind]
            self.lines[table] = [f"{local + offset}\t{rest}" for local, rest in self.lines[table]]
        self.lines["reviews"] = [_line(_shifted(row, _LOCAL_IDS["reviews"], offsets)) for row in self.lines["reviews"]]
        self.lines["referrals"] = [_line(_shifted(row, _LOCAL_IDS["referrals"], offsets))
                                   for row in self.lines["referrals"]]
        self.lines["push_subscriptions"] = [_line(_with_keys(row, offsets["subscription"], seed))
                                            for row in self.lines["push_subscriptions"]]
        return self.lines


def _shifted(row: tuple, positions: tuple[tuple[int, str], ...], offsets: dict[str, int]) -> list:
    row = list(row)
    for position, kind in positions:
        if row[position] is not None:
            row[position] += offsets[kind]
    return row


def _with_keys(row: tuple, offset: int, seed: int) -> tuple:
    subscription_id, customer_id, endpoint, p256dh, auth, created, revoked = row
    subscription_id += offset
    if p256dh is _DERIVED_KEY:
        private_key, auth_secret = push_subscription_keys(subscription_id, seed)
        p256dh = _b64(private_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint))
        auth = _b64(auth_secret)
    return subscription_id, customer_id, endpoint, p256dh, auth, created, revoked


def _copy(cursor, chunk: dict[str, list[str]]) -> None:
    for table, lines in chunk.items():
        if lines:
            data = io.StringIO("\n".join(lines) + "\n")
            cursor.copy_expert(f"COPY shop.{table} ({_COLUMNS[table]}) FROM STDIN", data, size=1 << 20)


class _Days(dict):
    """Day number since 1970 -> 'YYYY-MM-DD ', filled on first use."""

    def __missing__(self, day: int) -> str:
        self[day] = text = date.fromordinal(_EPOCH_ORDINAL + day).isoformat() + " "
        return text


@functools.cache
def _times_of_day(suffix: str) -> tuple[str, ...]:
    return tuple(f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}{suffix}" for s in range(DAY))


def _clock(anchor: datetime):
    """Offsets (seconds before the anchor) as timestamptz text: two lookups, no datetime arithmetic."""
    base = calendar.timegm(anchor.utctimetuple())
    times = _times_of_day((f".{anchor.microsecond:06d}" if anchor.microsecond else "") + "+00")
    days = _Days()

    def ts(offset: int) -> str:
        if offset >= 0:
            raise ValueError(f"generated a time at or after the anchor (offset {offset}s)")
        day, second = divmod(base + offset, DAY)
        return days[day] + times[second]

    return ts


class _Weights:
    """A weighted choice as a lookup table: one rng.random() per draw (random.choices is far slower)."""

    def __init__(self, weights: dict) -> None:
        self.table = tuple(itertools.chain.from_iterable([value] * weight for value, weight in weights.items()))

    def draw(self, rng: random.Random):
        return self.table[int(rng.random() * len(self.table))]


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_COUNTRY_MIX = _Weights({c: c.weight for c in COUNTRIES})
_TIER_MIX = _Weights({1: 50, 2: 35, 3: 15})
_QUANTITY_MIX = _Weights({1: 80, 2: 15, 3: 5})
_ORDER_SIZE = _Weights({1: 55, 2: 30, 3: 12, 4: 3})
_ORDER_PACE = _Weights({25 * DAY: 25, 60 * DAY: 45, 120 * DAY: 30})  # a customer's mean gap between orders
_RATINGS = _Weights({5: 50, 4: 26, 3: 10, 2: 6, 1: 8})
_CART_SIZE = _Weights({1: 60, 2: 30, 3: 10})
_ABANDONED_CARTS = _Weights({0: 62, 1: 27, 2: 9, 3: 2})  # per customer over the session window
_BROWSE_SESSIONS = _Weights({0: 40, 1: 25, 2: 15, 3: 10, 5: 10})
_EMAIL_SOURCES = _Weights({"checkout": 45, "newsletter_form": 30, "account_signup": 20, "popup": 5})
_SMS_SOURCES = _Weights({"checkout": 70, "sms_keyword": 30})
_DWELL_RATE = 1 / 40  # seconds on a page: exponential, mean 40 s
_NAME_POOL = 500  # names per country drawn by Faker (frequency-weighted), then picked by our RNG


@functools.cache  # per process: every block of a shop draws from the same names
def _name_pools(country: Country, seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """First and last names as (name, its ASCII form for the email address)."""
    faker = Faker(country.locale)
    faker.seed_instance(seed)
    if country.code == "JP":  # Japanese names come with their romanised reading
        firsts = [(name, latin) for name, _, latin in (faker.first_name_pair() for _ in range(_NAME_POOL))]
        lasts = [(name, latin) for name, _, latin in (faker.last_name_pair() for _ in range(_NAME_POOL))]
        return firsts, lasts
    return ([(name, name) for name in (faker.first_name() for _ in range(_NAME_POOL))],
            [(name, name) for name in (faker.last_name() for _ in range(_NAME_POOL))])


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


# --------------------------------------------------------------------------- the generator


@dataclass
class _Customer:
    customer_id: int
    country: Country
    created: int  # seconds relative to the anchor
    email: str
    anonymous_id: str
    favourite: str  # category
    refill: Product | None  # the consumable they reorder when a pack runs out


@dataclass
class _Order:
    order_id: int
    ordered: int
    delivered: int | None
    items: list[tuple[Product, int]]


class _Shop:
    """Writes one customer's story at a time into the COPY buffer."""

    def __init__(self, anchor: datetime, seed: int) -> None:
        self.anchor = anchor
        self.ts = _clock(anchor)
        self.seed = seed
        self.use_stream(random.Random(seed))
        self.names = {c.code: _name_pools(c, seed) for c in COUNTRIES}
        self.out = _CopyBuffer()
        self.products = build_catalogue()
        self.by_sku = {p.sku: p for p in self.products}
        self.price_text = {p.product_id: _money(p.price_cents) for p in self.products}
        self.by_category: dict[str, list[Product]] = {}
        self.by_category_tier: dict[tuple[str, int], list[Product]] = {}
        for p in self.products:
            self.by_category.setdefault(p.category, []).append(p)
            self.by_category_tier.setdefault((p.category, p.tier), []).append(p)
        self.categories = list(self.by_category)
        self.ids = {name: itertools.count(1) for name in
                    ("customer", "order", "cart", "view", "review", "referral", "subscription")}
        self.created_at = array("q", [0])  # customer_id - created_base -> created offset, for referrals
        self.created_base = 0
        self.first_random_customer = 0  # set once the planted customers exist (or a block starts)
        self.customer_rows = 0  # customers written (ids a planter skipped are not rows)

    # ---- primitives (the same draws as random.Random's own methods, in fewer Python calls)

    def use_stream(self, rng: random.Random) -> None:
        self.rng, self.random, self.getrandbits = rng, rng.random, rng.getrandbits

    def between(self, start: float, end: float) -> int:
        """A whole second in [start, end); floor, because int() would round -0.5 up to the anchor."""
        return _floor(start + self.random() * (end - start))

    def choice(self, seq):
        """rng.choice(seq): the same draw (getrandbits until below len(seq)), one call instead of two."""
        n = len(seq)
        if not n:
            raise IndexError("Cannot choose from an empty sequence")
        bits = n.bit_length()
        r = self.getrandbits(bits)
        while r >= n:
            r = self.getrandbits(bits)
        return seq[r]

    def token(self, nbytes: int = 12) -> str:
        return self.rng.randbytes(nbytes).hex()

    def draw(self, weights: _Weights):
        table = weights.table
        return table[int(self.random() * len(table))]

    # ---- catalogue

    def load_catalogue(self) -> None:
        for p in self.products:
            self.out.add("products", p.product_id, p.sku, p.name, p.category, p.brand, _money(p.price_cents),
                         image_url(p.sku), p.product_type, p.pack_units, p.units_per_day, p.tier)
        for link in build_product_links(self.products):
            self.out.add("product_links", *link)

    def pick_product(self, favourite: str) -> Product:
        # choice() and draw() inlined (10 calls per customer): the same draws, half the time.
        category = favourite if self.random() < 0.6 else self.choice(self.categories)
        tiers = _TIER_MIX.table
        products = self.by_category_tier[category, tiers[int(self.random() * len(tiers))]]
        n = len(products)
        bits, getrandbits = n.bit_length(), self.getrandbits
        r = getrandbits(bits)
        while r >= n:
            r = getrandbits(bits)
        return products[r]

    def pick_items(self, favourite: str, count: int, must: Product | None = None) -> list[tuple[Product, int]]:
        chosen = [must] if must else []
        ids = [p.product_id for p in chosen]  # ints compare faster than the dataclass
        for _ in range(count * 4):  # a few retries to find distinct products
            if len(chosen) >= count:
                break
            product = self.pick_product(favourite)
            if product.product_id not in ids:
                chosen.append(product)
                ids.append(product.product_id)
        quantities, rand = _QUANTITY_MIX.table, self.random
        return [(p, quantities[int(rand() * len(quantities))]) for p in chosen]

    # ---- rows shared by random and planted customers

    def add_customer(self, country: Country, created: int, birthday: date | None, email: str | None = None) -> _Customer:
        customer_id = next(self.ids["customer"])
        firsts, lasts = self.names[country.code]
        (first, email_first), (last, email_last) = self.choice(firsts), self.choice(lasts)
        email = email or self.email(customer_id, email_first, email_last)
        self.out.add("customers", customer_id, email, self.phone(country), _text(first), _text(last), country.code,
                     self.choice(country.timezones), country.locale,
                     birthday.isoformat() if birthday else None, self.ts(created))
        self.created_at.append(created)
        self.customer_rows += 1
        return _Customer(customer_id, country, created, email, self.token(8), self.choice(self.categories), None)

    def email(self, customer_id: int, first: str, last: str) -> str:
        first, last = _ascii_slug(first) or "customer", _ascii_slug(last) or "shop"
        local = self.choice((f"{first}.{last}", f"{first[0]}{last}", f"{first}_{last[0]}", first))
        return f"{local}{customer_id}@{self.choice(_EMAIL_DOMAINS)}"

    def phone(self, country: Country) -> str | None:
        if self.random() < 0.18:
            return None
        national = self.choice(country.mobile_prefixes) + "".join(
            self.rng.choices("0123456789", k=country.subscriber_digits))
        if country.code == "US":  # 555-01XX: the fictional range, keep the 01
            national = national[:6] + "01" + national[8:]
        # A few people type their number with a space: valid, but not E.164 until normalised.
        separator = " " if self.random() < 0.04 else ""
        return f"+{country.dial}{separator}{national}"

    def birthday(self) -> date | None:
        if self.random() < 0.15:
            return None
        return self.anchor.date() - timedelta(days=self.between(18 * 365, 75 * 365))

    def add_consent(self, customer_id: int, channel: str, status: str, updated: int,
                    double_opt_in: int | None, source: str) -> None:
        self.out.add("consents", customer_id, channel, status,
                     None if double_opt_in is None else self.ts(double_opt_in), source, self.ts(updated))

    def add_order(self, customer: _Customer, ordered: int, items: list[tuple[Product, int]],
                  fulfilment: tuple[str, int | None, int | None], coupon: str | None = None) -> _Order:
        """An order whose total is the sum of its items at their list prices."""
        status, shipped, delivered = fulfilment
        order_id = next(self.ids["order"])
        total = sum(p.price_cents * quantity for p, quantity in items)
        ts = self.ts
        self.out.lines["orders"].append((order_id, (  # the line out.add would make, built directly
            f"{customer.customer_id}\t{ts(ordered)}\t{status}\t{_money(total)}\tEUR\t{coupon or _NULL}\t"
            f"{_NULL if shipped is None else ts(shipped)}\t{_NULL if delivered is None else ts(delivered)}\t"
            f"{customer.country.code}")))
        order_items = self.out.lines["order_items"]
        for p, quantity in items:
            order_items.append((order_id, f"{p.product_id}\t{quantity}\t{self.price_text[p.product_id]}"))
        return _Order(order_id, ordered, delivered, items)

    def add_cart(self, customer_id: int | None, created: int, updated: int,
                 items: list[tuple[Product, int]], added: list[int] | None = None) -> int:
        """A cart and its lines; `added` gives each line's added_at (default: all at `updated`)."""
        cart_id = next(self.ids["cart"])
        self.out.add("carts", cart_id, customer_id, self.ts(created), self.ts(updated))
        for i, (p, quantity) in enumerate(items):
            when = added[i] if added else updated
            self.out.add("cart_items", cart_id, p.product_id, quantity, _money(p.price_cents), self.ts(when))
        return cart_id

    def add_review(self, order_id: int, product: Product, customer_id: int, rating: int, created: int) -> int:
        review_id = next(self.ids["review"])
        self.out.add("reviews", review_id, order_id, product.product_id, customer_id, rating, self.ts(created))
        return review_id

    def add_session(self, customer_id: int | None, anonymous_id: str, end: int, products: Iterable[Product]) -> None:
        """Page views of `products` (with a category page now and then) that finish by `end`."""
        # Inlined draws (expovariate(1 / 40), between(2, 31)): the same numbers, a third of the time.
        rand, ts, view_ids, rows = self.rng.random, self.ts, self.ids["view"], self.out.lines["page_views"]
        session_id = f"s-{self.token()}"
        head = f"{_NULL if customer_id is None else customer_id}\t{anonymous_id}\t{session_id}\t"
        t = end
        for p in reversed(list(products)):
            for product_id in ((p.product_id, None) if rand() < 0.15 else (p.product_id,)):
                dwell = min(300, 3 + int(-_log(1.0 - rand()) / _DWELL_RATE))
                t -= dwell + _floor(2 + rand() * 29)
                rows.append((next(view_ids), f"{head}{_NULL if product_id is None else product_id}\t{p.category}"
                                             f"\t{ts(t)}\t{dwell}"))

    # ---- a random customer's story

    def simulate_customer(self) -> None:
        country = self.draw(_COUNTRY_MIX)
        customer = self.add_customer(country, self.between(-_CUSTOMER_WINDOW, -2 * HOUR), self.birthday())
        if customer.favourite in _CONSUMABLES and self.random() < 0.6:
            customer.refill = self.choice(self.by_category[customer.favourite])
        self.random_consents(customer)
        orders = self.random_orders(customer)
        self.random_abandoned_carts(customer)
        self.random_browsing(customer)
        self.random_referral(customer, orders)

    def random_consents(self, c: _Customer) -> None:
        if self.random() < 0.85:
            self.random_consent(c, "email", self.draw(_EMAIL_SOURCES), 0.9, 0.92)
        if self.random() < 0.3:
            self.random_consent(c, "sms", self.draw(_SMS_SOURCES), 0.85, 0.8)
        if self.random() < 0.25 and (allowed := self.random_consent(c, "push", "browser_prompt", 0.9, 0)):
            self.random_push_subscription(c, allowed)
        if self.random() < 0.45:
            self.random_consent(c, "ads", "cookie_banner", 0.8, 0)

    def random_consent(self, c: _Customer, channel: str, source: str, p_in: float, p_double: float) -> int | None:
        """One consent row; returns when the customer opted in, or None if they opted out since."""
        given = self.between(c.created, min(c.created + 5 * MINUTE, -MINUTE)) if source in (
            "checkout", "account_signup") else self.between(c.created, -MINUTE)
        double = given + self.between(2 * MINUTE, 36 * HOUR) if self.random() < p_double else None
        if double is not None and double >= 0:
            double = None  # the confirmation mail is still unanswered
        opted_in = given if double is None else double
        if self.random() < p_in:
            self.add_consent(c.customer_id, channel, "opted_in", opted_in, double, source)
            return opted_in
        self.add_consent(c.customer_id, channel, "opted_out", self.between(opted_in, 0), double, source)
        return None

    def random_push_subscription(self, c: _Customer, allowed: int) -> None:
        """The browser subscribes right after the customer allows notifications.

        Its keys come from `push_subscription_keys(subscription_id, seed)`, so the demo's
        push service can decrypt what the engine sends (a real browser keeps them secret).
        """
        created = allowed + self.between(1, 30)
        revoked = self.between(created, 0) if self.random() < 0.06 else None
        subscription_id = next(self.ids["subscription"])
        endpoint = f"https://push.example.net/send/{self.token(16)}"
        # Draws that once made the keys: kept, so every other value of the shop stays as it was.
        self.rng.randrange(1, 2**255)
        self.rng.randbytes(16)
        self.out.add("push_subscriptions", subscription_id, c.customer_id, endpoint, _DERIVED_KEY, _DERIVED_KEY,
                     self.ts(created), None if revoked is None else self.ts(revoked))

    def random_orders(self, c: _Customer) -> list[_Order]:
        """Orders at a personal pace; many customers stop buying at some point (win-back material)."""
        if self.random() < 0.22:
            return []
        start = max(c.created, -_ORDER_WINDOW) + 2 * HOUR  # room for the browsing before it
        stop = self.between(start, 0) if self.random() < 0.45 else 0
        mean_gap = self.draw(_ORDER_PACE)
        # New accounts tend to buy within days; older ones at their usual pace.
        t = start + int(self.rng.expovariate(1 / (mean_gap if c.created < -_ORDER_WINDOW else 5 * DAY)))
        orders: list[_Order] = []
        while t < stop - MINUTE:
            items = self.pick_items(c.favourite, self.draw(_ORDER_SIZE), c.refill)
            coupon = self.coupon(first=not orders)
            orders.append(self.add_order(c, t, items, self.fulfilment(t, c.country), coupon))
            self.checkout_trail(c, t, items)
            self.maybe_review(c, orders[-1])
            t += self.next_gap(c, items, mean_gap)
        return orders

    def next_gap(self, c: _Customer, items: list[tuple[Product, int]], mean_gap: int) -> int:
        if c.refill:  # reorder when the pack runs out, give or take
            quantity = next(q for p, q in items if p is c.refill)
            return int(c.refill.pack_days * quantity * DAY * self.rng.uniform(0.85, 1.25))
        return HOUR + int(self.rng.expovariate(1 / mean_gap))

    def coupon(self, first: bool) -> str | None:
        if first and self.random() < 0.25:
            return "WELCOME10"
        if self.random() < 0.08:
            return self.choice(("SPRING15", "FREESHIP", "VIP20", "COMEBACK20"))
        return None

    def fulfilment(self, ordered: int, country: Country) -> tuple[str, int | None, int | None]:
        """(status, shipped, delivered) as of the anchor; delivery time depends on the country."""
        if self.random() < 0.02:
            return "cancelled", None, None
        shipped = ordered + self.between(3 * HOUR, 30 * HOUR)
        low, high = country.delivery_days
        delivered = max(shipped + 6 * HOUR, ordered + self.between(low * DAY, high * DAY))
        if shipped >= 0:
            return "placed", None, None
        if delivered >= 0 or self.random() < 0.004:  # not yet there, or lost in transit
            return "shipped", shipped, None
        return "delivered", shipped, delivered

    def checkout_trail(self, c: _Customer, ordered: int, items: list[tuple[Product, int]]) -> None:
        """Recent orders usually went through a cart, after browsing the products."""
        if ordered < -_SESSION_WINDOW + HOUR or self.random() < 0.3:
            return
        updated = ordered - self.between(MINUTE, 20 * MINUTE)
        created = updated - self.between(MINUTE, 40 * MINUTE)
        self.add_cart(c.customer_id, created, updated, items)
        self.add_session(c.customer_id, c.anonymous_id, created, [p for p, _ in items])

    def maybe_review(self, c: _Customer, order: _Order) -> None:
        if order.delivered is None or self.random() >= 0.3:
            return
        created = order.delivered + self.between(DAY, 20 * DAY)
        if created < 0:
            self.add_review(order.order_id, self.choice(order.items)[0], c.customer_id, self.draw(_RATINGS), created)

    def random_abandoned_carts(self, c: _Customer) -> None:
        start = max(c.created, -_SESSION_WINDOW) + HOUR
        if start >= -2 * MINUTE:
            return
        for _ in range(self.draw(_ABANDONED_CARTS)):
            updated = self.between(start, -MINUTE)
            created = updated - self.between(MINUTE, 50 * MINUTE)
            items = [] if self.random() < 0.06 else self.pick_items(c.favourite, self.draw(_CART_SIZE))
            self.add_cart(c.customer_id, created, updated, items)
            if items:
                self.add_session(c.customer_id, c.anonymous_id, created, [p for p, _ in items])

    def random_browsing(self, c: _Customer) -> None:
        """Known-customer sessions, plus an anonymous visitor now and then (sometimes with a guest cart)."""
        start = max(c.created, -_SESSION_WINDOW) + 2 * HOUR  # a session may last over an hour
        if start < -HOUR:
            for _ in range(self.draw(_BROWSE_SESSIONS)):
                products = [self.pick_product(c.favourite) for _ in range(self.rng.randint(1, 6))]
                self.add_session(c.customer_id, c.anonymous_id, self.between(start, 0), products)
        if self.random() < 0.3:
            visitor, products = f"a-{self.token(8)}", [self.pick_product(c.favourite) for _ in range(3)]
            end = self.between(-_SESSION_WINDOW + HOUR, -2 * MINUTE)
            self.add_session(None, visitor, end, products)
            if self.random() < 0.1:
                self.add_cart(None, end - MINUTE, end, [(products[0], 1)])

    def random_referral(self, c: _Customer, orders: list[_Order]) -> None:
        """A few customers were referred by an earlier customer; a few invites never signed up."""
        first_random = self.first_random_customer
        if c.customer_id <= first_random or self.random() >= 0.03:
            return
        referrer = self.rng.randrange(first_random, c.customer_id)
        created = c.created - self.between(HOUR, 7 * DAY)
        if created <= self.created_at[referrer - self.created_base]:
            return
        converted = next((o.order_id for o in orders if o.ordered > created), None)
        if self.random() < 0.3:  # an invite nobody accepted
            self.out.add("referrals", next(self.ids["referral"]), referrer,
                         f"friend.{self.token(4)}@example.net", self.ts(created), None)
        else:
            self.out.add("referrals", next(self.ids["referral"]), referrer, c.email, self.ts(created), converted)

    # ---- planted cases

    def plant(self) -> Planted:
        planted = Planted()
        for case in (*self.plant_cart_cases(), *self.plant_winback_cases(), *self.plant_review_cases(),
                     self.plant_leap_day_birthday()):
            planted[case.name] = case
        from lifecycle_demo.cases import planters

        for planter in planters():  # one module per journey (issue 3's catalogue)
            for case in planter(self):
                if case.name in planted:
                    raise ValueError(f"planted case {case.name!r} is defined twice")
                planted[case.name] = case
        self.first_random_customer = len(self.created_at)
        return planted

    def planted_customer(self, case: str, country: str = "DE", *, consent: str | None = "opted_in",
                         email: str | None = None, birthday: date | None = None) -> _Customer:
        """A customer with (double opt-in) email consent only, opened long before any case's events."""
        created = -300 * DAY
        customer = self.add_customer(_COUNTRY[country], created, birthday,
                                     email or f"planted.{case}@{PLANTED_EMAIL_DOMAIN}")
        if consent == "opted_in":
            self.add_consent(customer.customer_id, "email", "opted_in", created + DAY, created + DAY, "newsletter_form")
        elif consent == "opted_out":  # withdrawn at A-1d, inside the simulated window
            self.add_consent(customer.customer_id, "email", "opted_out", -DAY, created + DAY, "newsletter_form")
        return customer

    def items(self, *skus: str) -> list[tuple[Product, int]]:
        return [(self.by_sku[sku], 1) for sku in skus]

    def delivered_order(self, c: _Customer, delivered: int, items: list[tuple[Product, int]]) -> _Order:
        ordered = delivered - 3 * DAY
        return self.add_order(c, ordered, items, ("delivered", ordered + 20 * HOUR, delivered))

    def plant_cart_cases(self) -> list[PlantedCase]:
        cases = []

        def abandoned(name: str, description: str, updated: int, skus: tuple[str, ...], **customer) -> None:
            c = self.planted_customer(name, **customer)
            cart = self.add_cart(c.customer_id, updated - 12 * MINUTE, updated, self.items(*skus))
            cases.append(PlantedCase(name, description, c.customer_id, c.email, cart))

        abandoned("cart_recent", "2-item cart updated at A-2h, no order: reminder 1 due at A-1h",
                  -2 * HOUR, ("CLO-01-T2", "SHO-01-T1"), country="GB")

        c = self.planted_customer("cart_bought_after_first_reminder", "FR")
        items = self.items("COS-02-T2", "JEW-02-T1")
        cart = self.add_cart(c.customer_id, -3 * DAY - 15 * MINUTE, -3 * DAY, items)
        ordered = -3 * DAY + 5 * HOUR
        order = self.add_order(c, ordered, items, ("delivered", ordered + 18 * HOUR, ordered + 2 * DAY + 4 * HOUR))
        cases.append(PlantedCase("cart_bought_after_first_reminder",
                                 "cart updated A-3d, ordered A-3d+5h after reminder 1: exits with a thank-you",
                                 c.customer_id, c.email, cart, (order.order_id,)))

        c = self.planted_customer("cart_updated_after_reminder", "ES")
        first, again = -3 * DAY + 2 * HOUR, -2 * DAY - 4 * HOUR  # reminder 1 at A-3d+3h, then a new item
        cart = self.add_cart(c.customer_id, first - 5 * MINUTE, again, self.items("SPO-02-T1", "HOU-02-T2"),
                             added=[first, again])
        cases.append(PlantedCase("cart_updated_after_reminder",
                                 "cart with 1 item at A-3d+2h (reminder 1 at A-3d+3h), a 2nd item added at A-2d-4h: "
                                 "the clock moves, reminders 2 and 3 at A-1d-4h and A-4h show both items",
                                 c.customer_id, c.email, cart))

        abandoned("cart_full_sequence", "cart updated A-4d-2h, never ordered: reminders at +1h, +24h, +48h",
                  -4 * DAY - 2 * HOUR, ("FUR-01-T2", "HOU-01-T1"), country="NL")
        abandoned("cart_consent_withdrawn", "like cart_full_sequence, but email consent opted_out at A-1d",
                  -4 * DAY - 2 * HOUR, ("SPO-01-T1",), consent="opted_out")
        abandoned("cart_no_consent_row", "abandoned cart (A-30h) of a customer without any email consent row",
                  -30 * HOUR, ("CLO-02-T1",), consent=None, country="US")
        abandoned("cart_empty", "cart without items updated at A-3h: never selected", -3 * HOUR, ())
        abandoned("cart_invalid_email", "abandoned cart (A-20h) whose customer's email is 'not-an-email'",
                  -20 * HOUR, ("SHO-02-T1",), email="not-an-email", country="ES")

        c = self.planted_customer("cart_ordered_before", "DE")
        order = self.add_order(c, -11 * HOUR, self.items("COF-01-T2"), ("placed", None, None))
        cart = self.add_cart(c.customer_id, -10 * HOUR - 10 * MINUTE, -10 * HOUR, self.items("COF-02-T1", "HOU-02-T1"))
        cases.append(PlantedCase("cart_ordered_before",
                                 "cart updated A-10h after an order at A-11h: the earlier order does not exit",
                                 c.customer_id, c.email, cart, (order.order_id,)))
        return cases

    def plant_winback_cases(self) -> list[PlantedCase]:
        def lapsed(name: str, description: str, last_order: int, country: str, then: int | None = None) -> PlantedCase:
            c = self.planted_customer(name, country)
            orders = [self.delivered_order(c, last_order + 3 * DAY, self.items("CLO-01-T1", "COS-01-T1"))]
            if then is not None:  # ordered again after the first win-back email
                orders.append(self.add_order(c, then, self.items("CLO-02-T2"), ("shipped", then + 20 * HOUR, None)))
            return PlantedCase(name, description, c.customer_id, c.email, order_ids=tuple(o.order_id for o in orders))

        return [
            lapsed("winback_enters", "only order at A-92d: enters win-back at A-2d, never returns", -92 * DAY, "DE"),
            lapsed("winback_converts", "last order A-94d (enters A-4d), orders again at A-1d: converts",
                   -94 * DAY, "GB", then=-DAY),
            lapsed("winback_full_sequence", "last order A-115d: entered A-25d, emails at A-25d/-18d/-11d, "
                   "suppressed A-4d", -115 * DAY, "FR"),
            lapsed("winback_recent_buyer", "last order A-30d: not lapsed, never selected", -30 * DAY, "NL"),
        ]

    def plant_review_cases(self) -> list[PlantedCase]:
        soft = ("CLO-02-T1", "COS-01-T2")

        def reviewable(name: str, description: str, delivered: int, skus: tuple[str, ...] = soft,
                       rating: int | None = None, reviewed: int = -2 * DAY) -> PlantedCase:
            c = self.planted_customer(name, "DE")
            order = self.delivered_order(c, delivered, self.items(*skus))
            review = self.add_review(order.order_id, order.items[0][0], c.customer_id, rating, reviewed) if rating else None
            return PlantedCase(name, description, c.customer_id, c.email, order_ids=(order.order_id,), review_id=review)

        cases = [
            reviewable("review_soft", "soft goods delivered A-13d: request due A-3d, no review", -13 * DAY),
            reviewable("review_hard", "order with a hard good delivered A-24d: request due A-3d, no review",
                       -24 * DAY, ("FUR-02-T1", "CLO-01-T1")),
            reviewable("review_positive", "soft order delivered A-14d (due A-4d), 5-star review at A-2d: thank-you",
                       -14 * DAY, rating=5),
            reviewable("review_negative", "soft order delivered A-14d, 1-star review at A-2d: service recovery",
                       -14 * DAY, rating=1),
            reviewable("review_neutral", "soft order delivered A-14d, 3-star review at A-2d: silent exit",
                       -14 * DAY, rating=3),
            reviewable("review_reminder", "soft order delivered A-18d (request due A-8d), no review: reminder A-3d",
                       -18 * DAY),
            reviewable("review_before_request", "soft order delivered A-12d, 5-star review at A-5d: never asked",
                       -12 * DAY, rating=5, reviewed=-5 * DAY),
        ]
        c = self.planted_customer("review_undelivered", "AU")
        undelivered = self.add_order(c, -9 * DAY, self.items(*soft), ("shipped", -8 * DAY, None))
        cases.append(PlantedCase("review_undelivered", "ordered A-9d, shipped A-8d, never delivered: never asked",
                                 c.customer_id, c.email, order_ids=(undelivered.order_id,)))
        return cases

    def plant_leap_day_birthday(self) -> PlantedCase:
        c = self.planted_customer("birthday_leap_day", "GB", birthday=date(1992, 2, 29))
        return PlantedCase("birthday_leap_day", "born 1992-02-29: birthday journeys must cope with non-leap years",
                           c.customer_id, c.email)


@functools.cache  # names come from small pools
def _ascii_slug(name: str) -> str:
    # unidecode maps ß, ø, ł... too, which NFKD alone would drop.
    return "".join(ch for ch in unidecode(unicodedata.normalize("NFKC", name)).lower() if ch.isalnum())


def _b64(raw: bytes) -> str:
    return urlsafe_b64encode(raw).rstrip(b"=").decode()


_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def push_subscription_keys(subscription_id: int, seed: int) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """The browser side of a demo push subscription: its P-256 private key and 16-byte auth secret.

    Derived from (seed, subscription_id) alone, so whoever knows the seed (the demo's
    push service) can decrypt the RFC 8291 messages sent to a generated subscription.
    """
    material = f"lifecycle demo push subscription {seed} {subscription_id}".encode()
    scalar = int.from_bytes(hashlib.sha256(material + b" p256dh").digest()) % (_P256_ORDER - 1) + 1
    auth_secret = hashlib.sha256(material + b" auth").digest()[:16]
    return ec.derive_private_key(scalar, ec.SECP256R1()), auth_secret


# --------------------------------------------------------------------------- blocks

BLOCK_SIZE = 10_000  # customers per block, the unit of parallel work (block 0 also holds catalogue and cases)


@dataclass(frozen=True)
class _Block:
    number: int
    first_customer_id: int
    customers: int  # random customers to simulate


def _plan_blocks(anchor: datetime, seed: int, customers: int, block_size: int) -> tuple[Planted, list[_Block]]:
    """The planted cases and the blocks: which customer ids each block simulates.

    Block 0 continues the random stream the planted cases started (so a shop of up to
    `block_size` customers is what one sequential generator made); every later block has a
    stream of its own, seeded by (seed, block number). Block boundaries depend on the size
    alone, never on the number of workers, so neither does the shop.
    """
    shop = _Shop(anchor, seed)
    planted = shop.plant()
    made = shop.customer_rows  # planted customers (a case may plant more than one, e.g. a referred friend)
    if customers < made:
        raise ValueError(f"customers={customers} is fewer than the {made} planted customers")
    if block_size < made:
        raise ValueError(f"block_size={block_size} is smaller than the {made} planted customers")
    blocks = [_Block(0, 1, min(customers, block_size) - made)]
    first = next(shop.ids["customer"]) + blocks[0].customers
    for number, start in enumerate(range(block_size, customers, block_size), 1):
        blocks.append(_Block(number, first, min(block_size, customers - start)))
        first += block_size
    return planted, blocks


def _simulate_block(anchor: datetime, seed: int, block: _Block) -> _Shop:
    shop = _Shop(anchor, seed)
    if block.number == 0:
        shop.load_catalogue()
        shop.plant()
    else:
        shop.use_stream(random.Random(f"lifecycle demo shop {seed} block {block.number}"))
        shop.ids["customer"] = itertools.count(block.first_customer_id)
        shop.created_at, shop.created_base = array("q"), block.first_customer_id
        shop.first_random_customer = block.first_customer_id  # referrers come from the same block
    for _ in range(block.customers):
        shop.simulate_customer()
    return shop


class _Offsets:
    """Where each block's ids start: the sum of the ids the blocks before it used.

    Shared by the worker processes. A block publishes its counts as soon as it is simulated,
    then waits for the counts of the blocks before it: those were handed out earlier, so
    someone is already on them, and the wait is short.
    """

    def __init__(self, context, blocks: int) -> None:
        self.counts = context.Array("q", blocks * len(_ID_KINDS), lock=False)
        self.known = context.Array("b", blocks, lock=False)
        self.failed = context.Value("b", 0, lock=False)
        self.changed = context.Condition()

    def publish(self, number: int, used: dict[str, int]) -> None:
        with self.changed:
            for i, kind in enumerate(_ID_KINDS):
                self.counts[number * len(_ID_KINDS) + i] = used[kind]
            self.known[number] = 1
            self.changed.notify_all()

    def before(self, number: int) -> dict[str, int]:
        with self.changed:
            while not all(self.known[:number]):
                if self.failed.value:
                    raise RuntimeError(f"block {number} abandoned: another block failed")
                self.changed.wait(1)
        kinds = len(_ID_KINDS)
        return {kind: sum(self.counts[j * kinds + i] for j in range(number)) for i, kind in enumerate(_ID_KINDS)}

    def fail(self) -> None:
        with self.changed:
            self.failed.value = 1
            self.changed.notify_all()


def _fill_block(cursor, offsets: _Offsets, anchor: datetime, seed: int, block: _Block) -> None:
    shop = _simulate_block(anchor, seed, block)
    offsets.publish(block.number, {kind: next(shop.ids[kind]) - 1 for kind in _ID_KINDS})
    _copy(cursor, shop.out.finish(offsets.before(block.number), seed))


_worker: dict = {}  # a worker process's engine and the shared offsets


def _start_worker(url: str, offsets: _Offsets) -> None:
    import sqlalchemy as sa

    _worker.update(engine=sa.create_engine(url, poolclass=sa.pool.NullPool), offsets=offsets)


def _load_block(anchor: datetime, seed: int, block: _Block) -> None:
    """In a worker process: simulate one block and COPY it, in a transaction of its own."""
    connection = _worker["engine"].raw_connection()
    try:
        _fill_block(connection.cursor(), _worker["offsets"], anchor, seed, block)
        connection.commit()
    finally:
        connection.close()  # rolls back whatever did not commit


def _fill_in_parallel(url: str, anchor: datetime, seed: int, blocks: list[_Block], workers: int) -> None:
    # fork: no re-import per worker, and it works from scripts without a __main__ guard (spawn
    # re-runs the caller's main module). A worker only opens its own connection, simulates and COPYs.
    context = _mp_context()
    offsets = _Offsets(context, len(blocks))
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(url, offsets)) as pool:
        futures = [pool.submit(_load_block, anchor, seed, block) for block in blocks]  # handed out in order
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException:
            offsets.fail()  # release the blocks waiting for a failed one's counts
            for future in futures:
                future.cancel()
            raise


def _mp_context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


# --------------------------------------------------------------------------- entry point


def generate(engine: Engine, anchor: datetime, customers: int = 3000, seed: int = 7, *,
             workers: int | None = None, block_size: int = BLOCK_SIZE) -> Planted:
    """Create the shop schema and fill it with `customers` customers whose history ends before `anchor`.

    The shop depends on anchor, customers, seed and block_size, never on `workers` (default:
    one per CPU, at most one per block of `block_size` customers). With one worker everything
    loads in one transaction; with several, each worker process COPYs its blocks over a
    connection of its own and a failure truncates the shop again. Keys and indexes are
    dropped for the load and rebuilt after it, then every table is analysed.
    Raises ShopNotEmptyError if the shop already has data.
    """
    if anchor.tzinfo is None or anchor.utcoffset() is None:
        raise ValueError("anchor must be a timezone-aware datetime (UTC)")
    anchor = anchor.astimezone(UTC)
    create_shop_schema(engine)
    planted, blocks = _plan_blocks(anchor, seed, customers, block_size)
    workers = max(1, min(workers or os.cpu_count() or 1, len(blocks)))
    connection = engine.raw_connection()
    cursor = connection.cursor()
    try:
        # Session-wide: a concurrent generate() waits for this one, then finds the shop full.
        cursor.execute("SELECT pg_advisory_lock(%s)", (_LOAD_LOCK,))
        _refuse_non_empty(cursor)
        cursor.execute(f"SET maintenance_work_mem = '{_BUILD_MEMORY}'")  # index sorts in memory
        rebuild = _drop_keys_and_indexes(cursor)
        # Fresh statistics, so the first segment queries plan well.
        rebuild.append([(table, f"ANALYZE shop.{table}") for table in _COLUMNS])
        started = time.perf_counter()
        if workers == 1:
            offsets = _Offsets(_mp_context(), len(blocks))
            for block in blocks:
                _fill_block(cursor, offsets, anchor, seed, block)
            loaded = time.perf_counter()
            for phase in rebuild:
                _run(cursor, [statement for _, statement in phase])
            connection.commit()
        else:
            connection.commit()  # the workers' connections must see the tables without keys
            url = engine.url.render_as_string(hide_password=False)
            try:
                _fill_in_parallel(url, anchor, seed, blocks, workers)
                loaded = time.perf_counter()
                _rebuild_in_parallel(url, rebuild, workers)
            except BaseException:  # the workers committed their blocks: empty the shop again
                connection.rollback()
                cursor.execute("TRUNCATE " + ", ".join(f"shop.{table}" for table in _COLUMNS))
                _drop_keys_and_indexes(cursor)  # whatever the rebuild got to, then all of it (instant when empty)
                for phase in rebuild:
                    _run(cursor, [statement for _, statement in phase])
                connection.commit()
                raise
        log.info("demo shop: %d customers in %d blocks by %d worker(s): simulated and copied in %.1f s, "
                 "keys, indexes and statistics in %.1f s", customers, len(blocks), workers, loaded - started,
                 time.perf_counter() - loaded)
    except BaseException:
        connection.rollback()
        raise
    finally:
        cursor.execute("SELECT pg_advisory_unlock(%s)", (_LOAD_LOCK,))
        connection.commit()
        connection.close()
    return planted


def planted_cases() -> Planted:
    """What generate() plants, without a database: ids never depend on the anchor, seed or size.

    For code that reads a shop someone else generated (e.g. a session-wide test database).
    """
    return _Shop(datetime(2000, 1, 1, tzinfo=UTC), seed=0).plant()


_BUILD_MEMORY = "256MB"  # per connection building an index: the sort of 8M page views fits
_LOAD_LOCK = 0x5B0B_5E7D  # pg_advisory_lock key of generate()


def _refuse_non_empty(cursor) -> None:
    filled = []
    for table in _COLUMNS:
        cursor.execute(f"SELECT EXISTS (SELECT 1 FROM shop.{table})")
        if cursor.fetchone()[0]:
            filled.append(table)
    if filled:
        raise ShopNotEmptyError(
            f"the shop schema already has data (in shop.{', shop.'.join(filled)}); "
            "generate() only fills an empty shop: use a fresh database or drop schema shop first"
        )


def _drop_keys_and_indexes(cursor) -> list[list[tuple[str, str]]]:
    """Drop the shop's keys and indexes for the load; returns the (table, statement) that restore
    them, in two phases: primary keys and indexes, then the foreign keys that need those keys.

    PostgreSQL's advice for bulk loads ("Populating a Database"): checking a key or updating
    an index per row costs more than the COPY itself; building them once afterwards takes one
    sort per index and one join per foreign key.
    """
    cursor.execute(
        "SELECT format('%I.%I', n.nspname, t.relname), quote_ident(c.conname), pg_get_constraintdef(c.oid), c.contype"
        " FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace"
        " WHERE c.contype IN ('f', 'p') AND n.nspname = 'shop' ORDER BY c.contype, 1, 2"  # foreign keys first
    )
    keys = cursor.fetchall()
    cursor.execute(
        "SELECT format('%I.%I', n.nspname, i.relname), pg_get_indexdef(i.oid), format('%I.%I', n.nspname, t.relname)"
        " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_namespace n ON n.oid = i.relnamespace"
        " JOIN pg_class t ON t.oid = x.indrelid"
        " WHERE n.nspname = 'shop' AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)"
        " ORDER BY 1"
    )
    indexes = cursor.fetchall()
    for table, name, _, _ in keys:
        cursor.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
    for name, _, _ in indexes:
        cursor.execute(f"DROP INDEX {name}")
    add = {kind: [(table, f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}")
                  for table, name, definition, contype in keys if contype == kind] for kind in "pf"}
    return [[*add["p"], *((table, definition) for _, definition, table in indexes)], add["f"]]


def _rebuild_in_parallel(url: str, phases: list[list[tuple[str, str]]], workers: int) -> None:
    """Each phase's statements over `workers` connections at once, biggest tables first.

    Threads suffice: the server does the work (sorts for the keys and indexes, a join per
    foreign key). The shop's foreign keys form no cycle, so their locks cannot deadlock.
    """
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            size = dict(conn.exec_driver_sql(
                "SELECT format('%%I.%%I', n.nspname, c.relname), pg_relation_size(c.oid) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'shop'").all())
        with ThreadPoolExecutor(workers, thread_name_prefix="demo-shop-rebuild") as pool:
            for phase in phases:
                statements = [s for t, s in sorted(phase, key=lambda ts: -size.get(ts[0], 0))]
                list(pool.map(functools.partial(_execute_alone, engine), statements))
    finally:
        engine.dispose()


def _execute_alone(engine, statement: str) -> None:
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute(f"SET maintenance_work_mem = '{_BUILD_MEMORY}'")
        cursor.execute(statement)
        connection.commit()
    finally:
        connection.close()


def _run(cursor, statements: list[str]) -> None:
    for statement in statements:
        cursor.execute(statement)
