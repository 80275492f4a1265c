-- The email's own Message-ID header, stored on its message (issue 11 item 2, used by issue 12):
-- a returned bounce, a complaint or a reply names the message by it, and an index finds the row
-- without hashing every idempotency key. Written in the same statement that claims the message,
-- so a message whose outcome is unknown has it too. NULL for channels without one (SMS, push).
ALTER TABLE lifecycle.messages ADD COLUMN internet_message_id text;
CREATE UNIQUE INDEX messages_internet_message_id ON lifecycle.messages (internet_message_id)
    WHERE internet_message_id IS NOT NULL;
