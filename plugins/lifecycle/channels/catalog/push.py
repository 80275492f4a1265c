"""Browser web push (sender: lifecycle.channels.push)."""

from lifecycle.channels.base import Channel

CHANNEL = Channel(
    name="push",
    template_files=(".push-title.txt", ".push-body.txt"),
    label="browser notifications",
    address_sql="EXISTS (SELECT 1 FROM lifecycle.push_subscriptions ps WHERE ps.customer_id = {push_subscriptions} "
                "AND ps.revoked_at IS NULL)",
    no_address="no live push subscription",
    sender="lifecycle.channels.push:PushChannel",
    build="lifecycle.send:build_push",
    pool_slots=4,
)
