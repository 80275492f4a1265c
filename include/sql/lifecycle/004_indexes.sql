-- Summaries and coupon issuing look messages up by the run that planned them.
CREATE INDEX messages_planned_run ON lifecycle.messages (journey, planned_run_id);
