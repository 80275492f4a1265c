-- The demo warehouse: a small e-commerce shop (see DESIGN.md, "The demo warehouse").
-- Real deployments point segments at their own tables; every shipped segment,
-- test and example reads these. Timestamps are timestamptz (UTC on the wire).
CREATE SCHEMA IF NOT EXISTS shop;

CREATE TABLE IF NOT EXISTS shop.customers (
    customer_id   bigint PRIMARY KEY,
    email         text,
    phone         text,
    first_name    text,
    last_name     text,
    country       text,             -- ISO 3166-1 alpha-2
    timezone      text,             -- IANA name, e.g. Europe/Berlin
    locale        text,             -- e.g. en_GB
    birthday      date,
    created_at    timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS shop.consents (
    customer_id       bigint NOT NULL REFERENCES shop.customers,
    channel           text NOT NULL CHECK (channel IN ('email', 'sms', 'push', 'ads')),
    status            text NOT NULL CHECK (status IN ('opted_in', 'opted_out')),
    double_opt_in_at  timestamptz,
    source            text,
    updated_at        timestamptz NOT NULL,
    PRIMARY KEY (customer_id, channel)
);

CREATE TABLE IF NOT EXISTS shop.products (
    product_id     bigint PRIMARY KEY,
    sku            text NOT NULL,
    name           text NOT NULL,
    category       text NOT NULL,
    brand          text,
    price          numeric(10, 2) NOT NULL,
    image_url      text,
    product_type   text NOT NULL CHECK (product_type IN ('soft', 'hard', 'consumable')),
    pack_units     integer,          -- consumables: units in one pack
    units_per_day  numeric(8, 3),    -- consumables: typical daily use
    tier           integer NOT NULL DEFAULT 1
);

CREATE TABLE IF NOT EXISTS shop.product_links (
    product_id         bigint NOT NULL REFERENCES shop.products,
    linked_product_id  bigint NOT NULL REFERENCES shop.products,
    kind               text NOT NULL CHECK (kind IN ('upsell', 'cross_sell')),
    PRIMARY KEY (product_id, linked_product_id, kind)
);

CREATE TABLE IF NOT EXISTS shop.page_views (
    view_id          bigint PRIMARY KEY,
    customer_id      bigint REFERENCES shop.customers,
    anonymous_id     text,
    session_id       text NOT NULL,
    product_id       bigint REFERENCES shop.products,
    category         text,
    viewed_at        timestamptz NOT NULL,
    seconds_on_page  integer
);

CREATE TABLE IF NOT EXISTS shop.carts (
    cart_id      bigint PRIMARY KEY,
    customer_id  bigint REFERENCES shop.customers,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS shop.cart_items (
    cart_id     bigint NOT NULL REFERENCES shop.carts,
    product_id  bigint NOT NULL REFERENCES shop.products,
    quantity    integer NOT NULL CHECK (quantity > 0),
    unit_price  numeric(10, 2) NOT NULL,
    added_at    timestamptz,      -- when the line was put in (or last changed); NULL: at the cart's updated_at
    PRIMARY KEY (cart_id, product_id)
);

CREATE TABLE IF NOT EXISTS shop.orders (
    order_id          bigint PRIMARY KEY,
    customer_id       bigint NOT NULL REFERENCES shop.customers,
    ordered_at        timestamptz NOT NULL,
    status            text NOT NULL,   -- placed / shipped / delivered / cancelled
    total             numeric(12, 2) NOT NULL,
    currency          text NOT NULL DEFAULT 'EUR',
    coupon_code       text,
    shipped_at        timestamptz,
    delivered_at      timestamptz,
    shipping_country  text
);

CREATE TABLE IF NOT EXISTS shop.order_items (
    order_id    bigint NOT NULL REFERENCES shop.orders,
    product_id  bigint NOT NULL REFERENCES shop.products,
    quantity    integer NOT NULL CHECK (quantity > 0),
    unit_price  numeric(10, 2) NOT NULL,
    PRIMARY KEY (order_id, product_id)
);

CREATE TABLE IF NOT EXISTS shop.reviews (
    review_id    bigint PRIMARY KEY,
    order_id     bigint NOT NULL REFERENCES shop.orders,
    product_id   bigint REFERENCES shop.products,
    customer_id  bigint NOT NULL REFERENCES shop.customers,
    rating       integer NOT NULL CHECK (rating BETWEEN 1 AND 5),
    created_at   timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS shop.referrals (
    referral_id           bigint PRIMARY KEY,
    referrer_customer_id  bigint NOT NULL REFERENCES shop.customers,
    referred_email        text NOT NULL,
    created_at            timestamptz NOT NULL,
    converted_order_id    bigint REFERENCES shop.orders
);

CREATE TABLE IF NOT EXISTS shop.push_subscriptions (
    subscription_id  bigint PRIMARY KEY,
    customer_id      bigint NOT NULL REFERENCES shop.customers,
    endpoint         text NOT NULL,
    p256dh           text NOT NULL,
    auth             text NOT NULL,
    created_at       timestamptz NOT NULL,
    revoked_at       timestamptz
);

CREATE TABLE IF NOT EXISTS shop.engagement_events (
    customer_id  bigint NOT NULL,
    message_id   text,
    channel      text NOT NULL,
    event        text NOT NULL CHECK (event IN ('delivered', 'open', 'click', 'bounce', 'complaint', 'unsubscribe')),
    occurred_at  timestamptz NOT NULL
);

-- Indexes the shipped segments lean on.
CREATE INDEX IF NOT EXISTS orders_customer_time ON shop.orders (customer_id, ordered_at);
CREATE INDEX IF NOT EXISTS carts_updated ON shop.carts (updated_at);
CREATE INDEX IF NOT EXISTS page_views_customer_time ON shop.page_views (customer_id, viewed_at);
CREATE INDEX IF NOT EXISTS reviews_order ON shop.reviews (order_id);
CREATE INDEX IF NOT EXISTS orders_delivered ON shop.orders (delivered_at);
CREATE INDEX IF NOT EXISTS orders_time ON shop.orders (ordered_at);        -- new orders (confirmations)
CREATE INDEX IF NOT EXISTS orders_shipped ON shop.orders (shipped_at);     -- shipping notices
CREATE INDEX IF NOT EXISTS orders_coupon ON shop.orders (coupon_code) WHERE coupon_code IS NOT NULL;  -- redemptions
CREATE INDEX IF NOT EXISTS engagement_customer_time ON shop.engagement_events (customer_id, occurred_at);  -- clicks lift sunsets
CREATE INDEX IF NOT EXISTS push_subscriptions_customer ON shop.push_subscriptions (customer_id, created_at);  -- a push's newest live subscription (send)
