-- Everything needed to render one batch's planned messages (lifecycle.send.load_batch), in the
-- order they came due. The contacts_id and push_id placeholders: m.customer_id in each view's id type.
SELECT m.message_id, m.idempotency_key, m.journey, m.step, m.channel, m.template, m.kind, m.variant,
       m.customer_id, e.enrollment_key, e.context, ct.email, ct.phone, ct.first_name,
       ct.last_name, ct.locale, ct.country, ct.timezone, cp.code AS coupon_code, cp.percent_off,
       cp.valid_until, ps.endpoint, ps.p256dh, ps.auth
FROM lifecycle.messages m
JOIN lifecycle.enrollments e ON e.enrollment_id = m.enrollment_id
LEFT JOIN lifecycle.contacts ct ON ct.customer_id = {contacts_id}
LEFT JOIN LATERAL (
    SELECT c.code, c.percent_off, c.valid_until FROM lifecycle.coupons c
    WHERE c.enrollment_id = m.enrollment_id ORDER BY c.created_at DESC, c.valid_from DESC, c.code LIMIT 1
) cp ON true
LEFT JOIN LATERAL (  -- the newest live push subscription (push batches only)
    SELECT p.endpoint, p.p256dh, p.auth FROM lifecycle.push_subscriptions p
    WHERE m.channel = 'push' AND p.customer_id = {push_id} AND p.revoked_at IS NULL
    ORDER BY p.created_at DESC, p.subscription_id DESC LIMIT 1
) ps ON true
WHERE m.journey = :journey AND m.run_id = :run_id AND m.channel = :channel AND m.batch_no = :batch
  AND m.status = 'planned'
ORDER BY m.due_at, m.message_id  -- in the order they came due: an order's confirmation before its shipping notice
