-- The frequency cap counts each customer's recent marketing sends per channel at send time.
CREATE INDEX messages_sent_by_customer ON lifecycle.messages (customer_id, channel, sent_at)
    WHERE status = 'sent' AND kind = 'marketing';
