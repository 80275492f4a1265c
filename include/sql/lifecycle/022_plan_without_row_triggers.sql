-- Planning writes a message per due enrollment, and a coupon per message of a coupon step, in one
-- INSERT ... SELECT that reads those enrollments (lifecycle.plan.insert_messages). The foreign keys
-- from messages and coupons to lifecycle.enrollments checked each row again in a trigger of its
-- own: a lookup that also locked the enrollment row (FOR KEY SHARE: a WAL record per row), 16 us
-- a row, 7 of the 26 seconds the statement took for 224k win_back messages and their coupons
-- at 1M customers. Each id comes from the enrollment row the statement joined, and enrollments are
-- never deleted (they end with a status), so the check could not fail: the keys are dropped.
-- tests/test_plan_statistics.py checks that a plan leaves no message or coupon without its
-- enrollment. (conversions keep theirs: a handful of rows per run.)
ALTER TABLE lifecycle.messages DROP CONSTRAINT IF EXISTS messages_enrollment_id_fkey;
ALTER TABLE lifecycle.coupons DROP CONSTRAINT IF EXISTS coupons_enrollment_id_fkey;
