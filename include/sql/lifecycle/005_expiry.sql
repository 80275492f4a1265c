-- A message must go out before due_at + max_lateness, whenever it is sent: a backfill of an
-- old interval or a message left behind by an outage is recorded expired, not sent weeks late.
ALTER TABLE lifecycle.messages ADD COLUMN expires_at timestamptz;
