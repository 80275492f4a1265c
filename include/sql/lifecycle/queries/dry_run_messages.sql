-- `lifecycle report --mode dry`: what dry runs would have sent, one line per journey, step and
-- channel: how many messages, how many distinct subjects and bodies (personalised ones differ per
-- customer) and the subject of the first message (lowest id) as an example. Optional filters as in
-- journey_summary.sql (one journey; messages by planned_for in [since, until)).
SELECT journey, step, channel, count(*) AS messages,
       count(DISTINCT dry_run_subject) AS subjects, count(DISTINCT dry_run_body_sha256) AS bodies,
       coalesce((array_agg(dry_run_subject ORDER BY message_id))[1], '') AS example_subject
FROM lifecycle.messages
WHERE mode = 'dry' AND status = 'dry_run' AND (CAST(:journey AS text) IS NULL OR journey = :journey)
  AND (CAST(:since AS timestamptz) IS NULL OR planned_for >= :since)
  AND (CAST(:until AS timestamptz) IS NULL OR planned_for < :until)
GROUP BY journey, step, channel
ORDER BY journey, step, channel
