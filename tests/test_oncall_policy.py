"""Who is paged when: business hours on the desk's wall clock, across a week and both DST changes."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from ticketing.oncall import in_business_hours, next_opening, should_page
from ticketing.settings import HoursSettings, OncallSettings
from ticketing.severity import Severity

LA = ZoneInfo("America/Los_Angeles")
HOURS = HoursSettings()  # Monday-Friday 06:00-18:00, America/Los_Angeles


def utc(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# (instant in UTC, what it is on the desk's wall clock, inside business hours)
# 2026: clocks go forward on Sunday 8 March and back on Sunday 1 November.
WEEK = [
    (utc(2026, 3, 3, 18, 0), "Tue 10:00 PST", True),
    (utc(2026, 3, 3, 13, 59), "Tue 05:59 PST", False),
    (utc(2026, 3, 3, 14, 0), "Tue 06:00 PST, opening", True),
    (utc(2026, 3, 4, 1, 59), "Tue 17:59 PST", True),
    (utc(2026, 3, 4, 2, 0), "Tue 18:00 PST, closing", False),
    (utc(2026, 3, 4, 10, 0), "Wed 02:00 PST, night", False),
    (utc(2026, 3, 6, 20, 0), "Fri 12:00 PST", True),
    (utc(2026, 3, 7, 3, 0), "Fri 19:00 PST", False),
    (utc(2026, 3, 7, 20, 0), "Sat 12:00 PST", False),
    (utc(2026, 3, 8, 10, 0), "Sun 03:00 PDT, just after spring forward", False),
    (utc(2026, 3, 8, 19, 0), "Sun 12:00 PDT", False),
    (utc(2026, 3, 9, 13, 30), "Mon 06:30 PDT (05:30 on last week's offset)", True),
    (utc(2026, 3, 9, 12, 30), "Mon 05:30 PDT", False),
    (utc(2026, 3, 10, 0, 30), "Mon 17:30 PDT", True),
    (utc(2026, 3, 10, 1, 30), "Mon 18:30 PDT (17:30 on last week's offset)", False),
    (utc(2026, 10, 31, 0, 30), "Fri 17:30 PDT", True),
    (utc(2026, 10, 31, 19, 0), "Sat 12:00 PDT", False),
    (utc(2026, 11, 1, 8, 30), "Sun 01:30 PDT, the first of the repeated hour", False),
    (utc(2026, 11, 1, 9, 30), "Sun 01:30 PST, the second of the repeated hour", False),
    (utc(2026, 11, 2, 14, 30), "Mon 06:30 PST", True),
    (utc(2026, 11, 2, 13, 30), "Mon 05:30 PST (06:30 on last week's offset)", False),
    (utc(2026, 11, 3, 1, 30), "Mon 17:30 PST", True),
    (utc(2026, 11, 3, 2, 0), "Mon 18:00 PST, closing", False),
]


@pytest.mark.parametrize(("at", "wall", "inside"), WEEK, ids=[w for _, w, _ in WEEK])
def test_business_hours_follow_the_desks_wall_clock(at: datetime, wall: str, inside: bool) -> None:
    assert in_business_hours(at, HOURS) is inside


@pytest.mark.parametrize("s1_outside_hours", [False, True], ids=["s1-policy-off", "s1-policy-on"])
@pytest.mark.parametrize("severity", list(Severity), ids=[s.label for s in Severity])
@pytest.mark.parametrize(("at", "wall", "inside"), WEEK, ids=[w for _, w, _ in WEEK])
def test_paging_policy_over_a_week(
    at: datetime, wall: str, inside: bool, severity: Severity, s1_outside_hours: bool
) -> None:
    oncall = OncallSettings(s1_outside_hours=s1_outside_hours)
    # S0 pages day and night; S1 only outside hours and only when asked for.
    expected = severity is Severity.S0 or (
        severity is Severity.S1 and s1_outside_hours and not inside
    )
    assert should_page(severity, at, oncall, HOURS) is expected


def test_an_s1_at_friday_19_00_pages_and_one_at_tuesday_10_00_does_not() -> None:
    oncall = OncallSettings(s1_outside_hours=True)
    friday_evening = datetime(2026, 3, 6, 19, 0, tzinfo=LA)
    tuesday_morning = datetime(2026, 3, 3, 10, 0, tzinfo=LA)
    assert should_page(Severity.S1, friday_evening, oncall, HOURS)
    assert not should_page(Severity.S1, tuesday_morning, oncall, HOURS)


def test_page_on_lists_the_levels_that_page_at_any_hour() -> None:
    oncall = OncallSettings(page_on=("S0", "S1"))
    tuesday_morning = datetime(2026, 3, 3, 10, 0, tzinfo=LA)
    assert should_page(Severity.S1, tuesday_morning, oncall, HOURS)
    assert not should_page(Severity.S2, tuesday_morning, oncall, HOURS)
    assert not should_page(Severity.S0, tuesday_morning, OncallSettings(page_on=()), HOURS)


def test_a_shift_past_midnight_belongs_to_the_day_it_starts() -> None:
    nights = HoursSettings(timezone="Europe/Berlin", days=("fri",), start="22:00", end="04:00")
    berlin = ZoneInfo("Europe/Berlin")
    assert in_business_hours(datetime(2026, 3, 6, 23, 0, tzinfo=berlin), nights)  # Fri 23:00
    assert in_business_hours(datetime(2026, 3, 7, 3, 59, tzinfo=berlin), nights)  # Sat 03:59
    assert not in_business_hours(datetime(2026, 3, 7, 4, 0, tzinfo=berlin), nights)
    assert not in_business_hours(datetime(2026, 3, 7, 23, 0, tzinfo=berlin), nights)  # Sat
    assert not in_business_hours(datetime(2026, 3, 6, 3, 0, tzinfo=berlin), nights)  # Thu's


OPENINGS = [
    # (now, next opening on the desk's wall clock, its UTC offset in hours)
    (datetime(2026, 3, 6, 19, 0, tzinfo=LA), datetime(2026, 3, 9, 6, 0), -7),  # over spring fwd
    (datetime(2026, 10, 31, 9, 0, tzinfo=LA), datetime(2026, 11, 2, 6, 0), -8),  # over fall back
    (datetime(2026, 3, 3, 5, 0, tzinfo=LA), datetime(2026, 3, 3, 6, 0), -8),  # later today
    (datetime(2026, 3, 3, 18, 0, tzinfo=LA), datetime(2026, 3, 4, 6, 0), -8),  # tomorrow
    (datetime(2026, 3, 8, 12, 0, tzinfo=LA), datetime(2026, 3, 9, 6, 0), -7),  # Sunday noon
]


@pytest.mark.parametrize(("now", "wall", "offset"), OPENINGS)
def test_next_opening_is_the_next_working_morning(
    now: datetime, wall: datetime, offset: int
) -> None:
    opening = next_opening(now.astimezone(UTC), HOURS)
    assert opening.tzinfo is not None and str(opening.tzinfo) == "America/Los_Angeles"
    assert opening.replace(tzinfo=None) == wall
    assert opening.utcoffset() is not None
    assert opening.utcoffset().total_seconds() == offset * 3600  # type: ignore[union-attr]
    assert in_business_hours(opening, HOURS)


def test_next_opening_while_open_is_now() -> None:
    now = utc(2026, 3, 3, 18, 0)
    assert next_opening(now, HOURS) == now
    assert next_opening(now, HOURS).tzinfo == LA


def test_an_opening_inside_the_spring_forward_gap_lands_on_a_real_time() -> None:
    early = HoursSettings(days=("sun",), start="02:30", end="12:00")
    opening = next_opening(datetime(2026, 3, 7, 23, 0, tzinfo=LA), early)
    assert opening.astimezone(UTC) == utc(2026, 3, 8, 10, 30)  # 03:30 PDT
    assert opening.astimezone(UTC).astimezone(LA).replace(tzinfo=None) == datetime(
        2026, 3, 8, 3, 30
    )


def test_a_desk_with_no_working_days_never_opens() -> None:
    closed = HoursSettings(days=())
    assert not in_business_hours(utc(2026, 3, 3, 18, 0), closed)
    with pytest.raises(ValueError, match="never opens"):
        next_opening(utc(2026, 3, 3, 18, 0), closed)
