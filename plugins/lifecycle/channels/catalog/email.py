"""Email over SMTP (sender: lifecycle.channels.email)."""

from lifecycle.channels.base import Channel

# What counts as an address, in the segment's rows (validate), when a step chooses its channel
# (plan) and again at send time (send): one pattern, read by PostgreSQL and by GX alike.
EMAIL_REGEX = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"

CHANNEL = Channel(
    name="email",
    template_files=(".subject.txt", ".txt", ".html"),
    label="marketing emails",
    address_sql="EXISTS (SELECT 1 FROM lifecycle.contacts ct WHERE ct.customer_id = {contacts} "
                f"AND ct.email ~ '{EMAIL_REGEX}')",
    no_address="invalid address",
    sender="lifecycle.channels.email:EmailChannel",
    build="lifecycle.send:build_email",
    pool_slots=4,
    blocks_transactional=("hard_bounce", "complaint"),  # RCPT 5xx, or the mailbox's DSN / ARF reports
    segment_column="email",
)
