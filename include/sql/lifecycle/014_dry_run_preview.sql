-- A dry run records what would have gone out: the rendered subject (email subject, push title)
-- and a sha256 of the rendered body, so `lifecycle report --mode dry` can show them and two
-- runs can be compared without storing customers' message bodies.
ALTER TABLE lifecycle.messages ADD COLUMN dry_run_subject text, ADD COLUMN dry_run_body_sha256 text;
