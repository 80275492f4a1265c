-- How the engine reaches people, and which orders count: adapt these views to your warehouse.
-- Re-applied on every migrate, so edits here take effect on the next run.
-- lifecycle.contacts: one row per customer with the addresses channels use.
-- lifecycle.consent:  one row per customer and channel; opted_in is checked at send time.
--
-- Ids may be whole numbers or text (hex ids, '#1001', UUIDs): expose customer_id in your
-- warehouse's own type, the same in all three views (no cast here: a cast would hide the
-- index on your customer table). The engine keeps ids as text in its lifecycle tables and reads
-- the type of lifecycle.contacts.customer_id to compare like with like: conditions see
-- `enrollments.customer_id` in that type, so `o.customer_id = e.customer_id` works unchanged.
CREATE OR REPLACE VIEW lifecycle.contacts AS
SELECT customer_id, email, phone, first_name, last_name, country, timezone, locale
FROM shop.customers;

CREATE OR REPLACE VIEW lifecycle.consent AS
SELECT customer_id, channel, status = 'opted_in' AS opted_in, updated_at
FROM shop.consents;

-- lifecycle.push_subscriptions: browser push subscriptions. A simple one-table view, so the
-- engine's "revoke this endpoint" UPDATE (after a 404/410 from the push service) writes through.
CREATE OR REPLACE VIEW lifecycle.push_subscriptions AS
SELECT subscription_id, customer_id, endpoint, p256dh, auth, created_at, revoked_at
FROM shop.push_subscriptions;

-- lifecycle.orders: the shop's orders that count, i.e. not cancelled. Segments and conditions read
-- it instead of repeating the filter (join shop.order_items to it for the lines of those orders);
-- change the WHERE here if your shop marks cancellations differently. A plain view: its columns
-- keep your table's names and types, and the planner reads shop.orders' indexes through it.
CREATE OR REPLACE VIEW lifecycle.orders AS
SELECT o.*
FROM shop.orders o
WHERE o.status <> 'cancelled';

-- The recommender (lifecycle.recommend_for / co_purchased) returns ids in the types of
-- shop.orders.customer_id and shop.order_items.product_id: re-created here, so re-applying these
-- views after changing the warehouse's id types keeps it in step (012_text_ids.sql).
SELECT lifecycle.define_recommender();
