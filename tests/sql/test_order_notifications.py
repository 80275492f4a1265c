"""order_notifications.sql: one notice per event in the lookback, before as_of: a confirmation
for an order placed, a shipping notice for an order shipped; none for an order cancelled when
the run reads it."""

from __future__ import annotations

from datetime import date

from .conftest import AS_OF, HOUR


def test_a_new_order_and_a_shipped_one_get_their_notices(sql):
    sql.customer(1, timezone="America/Sao_Paulo")
    sql.order(10, 1, AS_OF - 2 * HOUR, 5, 6, total=25)
    sql.order(20, 1, AS_OF - 30 * HOUR, 5, shipped_at=AS_OF - HOUR)  # placed before the lookback, shipped in it
    rows = {r["notice_key"]: r for r in sql.select("order_notifications")}
    assert set(rows) == {"10:confirmation", "20:shipping"}
    assert (rows["10:confirmation"]["notice_at"], rows["10:confirmation"]["units"]) == (AS_OF - 2 * HOUR, 2)
    assert rows["10:confirmation"]["adjustments"] == 5  # 25.00 for two 10.00 lines
    assert rows["20:shipping"]["shipped_on"] == date(2026, 11, 19)  # 22:00 the day before in São Paulo


def test_cancelled_old_or_future_events_get_no_notice(sql):
    sql.order(10, 1, AS_OF - 2 * HOUR, 5, status="cancelled", shipped_at=AS_OF - HOUR)
    sql.order(20, 1, AS_OF - 25 * HOUR, 5)  # placed before the 24-hour lookback
    sql.order(30, 1, AS_OF, 5)  # at as_of: the next run's
    sql.order(40, 1, AS_OF - 30 * HOUR, 5, shipped_at=AS_OF)
    assert sql.keys("order_notifications") == set()
