"""Text messages over Twilio's Messages API (sender: lifecycle.channels.sms)."""

from lifecycle.channels.base import Channel

CHANNEL = Channel(
    name="sms",
    template_files=(".sms.txt",),
    label="marketing text messages",
    # A number at all; the sender normalises it to E.164 (and skips landlines) per message.
    address_sql="EXISTS (SELECT 1 FROM lifecycle.contacts ct WHERE ct.customer_id = {contacts} "
                "AND nullif(trim(ct.phone), '') IS NOT NULL)",
    no_address="missing phone",
    sender="lifecycle.channels.sms:SMSChannel",
    build="lifecycle.send:build_sms",
    pool_slots=2,
    blocks_transactional=("provider_opt_out",),  # a carrier-level STOP refuses every text from our number
)
