-- Pieces every segment shares, so a rule is written once (issue 9). The other two live elsewhere:
-- lifecycle.orders (the shop's orders that count: not cancelled) is a view in contacts.sql, next to
-- the other views that read the shop's own tables, and each condition may read the
-- orders_since_entry CTE that the engine puts next to `enrollments` (plugins/lifecycle/sql.py).

-- The product as templates show it (the `_layouts/products` macros read these keys):
--   lifecycle.product_card(pr, :shop_url)
--     = {product_id, name, image_url, price, product_url: <shop_url>/p/<sku>}
-- `product` is a row of shop.products (pass the table's alias) or of any table or view with those
-- columns; a list adds its own keys with ||, e.g. `|| jsonb_build_object('quantity', l.quantity)`.
-- The argument is polymorphic, so the function needs no shop table to exist and takes the shop's
-- own id type; each call is inlined (STABLE like jsonb_build_object itself), so the plan is that of
-- the jsonb_build_object written out. A row of a subquery or CTE (type `record`) cannot be used:
-- select the product's row into it instead (`SELECT pr AS product, ...`).
CREATE OR REPLACE FUNCTION lifecycle.product_card(product anyelement, shop_url text) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT jsonb_build_object(
        'product_id',  (product).product_id,
        'name',        (product).name,
        'image_url',   (product).image_url,
        'price',       (product).price,
        'product_url', shop_url || '/p/' || (product).sku
    )
$$;
