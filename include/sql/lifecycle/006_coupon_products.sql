-- Product-specific codes (a step's `coupon: {product: <column>}`): the code is only good for
-- an order that contains this product. NULL: a code for the whole order, as before. No foreign
-- key: the product catalogue is the warehouse's (shop.products in the demo), not the engine's.
ALTER TABLE lifecycle.coupons ADD COLUMN product_id bigint;
