"""The tracker: fetches → ticks, once per sequence, capped by wall time, fractions carried."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from vilokanam.billing.tracker import Due, Fetch, Tracker

T0 = 1_700_000_000.0
TARGET = 2.0

# one fetch: (sequence, rendition, seconds since the previous fetch: may go back a little)
fetch_steps = st.lists(
    st.tuples(
        st.integers(0, 40),
        st.sampled_from(["720p", "480p", "360p", "source"]),
        st.floats(-1.0, 6.0, allow_nan=False),
    ),
    max_size=120,
)
durations = st.lists(st.floats(0.2, 6.0, allow_nan=False), min_size=41, max_size=41)


def _fetches(steps: list[tuple[int, str, float]], lengths: list[float], session: int = 1):
    at = T0
    for sequence, _rendition, step in steps:
        at += step
        yield Fetch(7, session, sequence, lengths[sequence], at)


def _state(tracker: Tracker, session: int = 1) -> tuple[int, int, list[list[int]], float] | None:
    due = tracker.state(7, session)
    return (
        None if due is None else (due.ticks_to, due.content_ms, due.sequences, due.first_fetch_at)
    )


def _restore(tracker: Tracker, due: Due) -> None:
    """Put back what a flush saved of ``due`` (as the billing service does after a restart)."""
    tracker.restore(
        due.viewer_id,
        due.session_id,
        first_fetch_at=due.first_fetch_at,
        content_ms=due.content_ms,
        ticks=due.ticks_to,
        sequences=due.sequences,
        pending_ms=due.pending_ms,
    )


@settings(max_examples=300, deadline=None)
@given(steps=fetch_steps, lengths=durations, preview=st.sampled_from([0.0, 3.0, 10.0]))
def test_never_bills_more_than_content_or_wall_time(
    steps: list[tuple[int, str, float]], lengths: list[float], preview: float
) -> None:
    tracker = Tracker(TARGET, free_preview=preview)
    fetches = list(_fetches(steps, lengths))
    ticks = sum(tracker.note(fetch) for fetch in fetches)
    state = _state(tracker)
    if not fetches:
        assert ticks == 0 and state is None
        return
    assert state is not None
    due, content_ms, sequences, _ = state
    assert due == ticks, "note() returns exactly the new ticks"
    distinct = {fetch.sequence for fetch in fetches}
    watched_ms = sum(round(lengths[sequence] * 1000) for sequence in distinct)
    first_ms = round(fetches[0].at * 1000)
    wall_ms = max(round(fetch.at * 1000) for fetch in fetches) - first_ms
    assert content_ms <= watched_ms, "never more than the content watched"
    assert content_ms <= max(wall_ms, 0) + round(TARGET * 1000), "never more than wall time"
    assert ticks * 1000 <= max(content_ms - round(preview * 1000), 0) < (ticks + 1) * 1000
    assert sum(end - start + 1 for start, end in sequences) == len(distinct)


@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(1, 60),
    length=st.sampled_from([1.0, 1.5, 2.0, 2.002, 1.001]),
    retries=st.lists(st.tuples(st.integers(0, 59), st.floats(0, 30)), max_size=40),
    switches=st.lists(st.sampled_from(["720p", "480p", "360p"]), min_size=60, max_size=60),
)
def test_real_time_pace_bills_exactly_the_content(
    count: int, length: float, retries: list[tuple[int, float]], switches: list[str]
) -> None:
    """N distinct sequences fetched as they play (ABR switches, retries later): N x duration."""
    tracker = Tracker(TARGET)
    events = [(T0 + index * length, index) for index in range(count)]
    events += [(T0 + (seq % count) * length + later, seq % count) for seq, later in retries]
    events.sort()
    ticks = sum(tracker.note(Fetch(1, 1, seq, length, at)) for at, seq in events)
    assert ticks == count * round(length * 1000) // 1000
    assert len(switches) == 60  # renditions do not reach the tracker: the sequence is the unit


def test_fractions_are_carried_exactly() -> None:
    tracker = Tracker(TARGET)
    ticks = [tracker.note(Fetch(1, 1, seq, 1.5, T0 + seq * 1.5)) for seq in range(3)]
    assert ticks == [1, 2, 1]
    (due,) = tracker.pending()
    assert (due.ticks_from, due.ticks_to, due.content_ms) == (0, 4, 4500)


def test_retries_and_other_renditions_are_free() -> None:
    tracker = Tracker(TARGET)
    assert tracker.note(Fetch(1, 1, 10, 2.0, T0)) == 2
    assert tracker.note(Fetch(1, 1, 10, 2.0, T0 + 1)) == 0  # retry
    assert tracker.note(Fetch(1, 1, 10, 2.0, T0 + 1)) == 0  # another rendition
    assert tracker.note(Fetch(1, 1, 11, 2.0, T0 + 2)) == 2
    assert tracker.note(Fetch(1, 2, 11, 2.0, T0 + 2)) == 2, "another session is billed apart"
    assert tracker.note(Fetch(2, 1, 11, 2.0, T0 + 2)) == 2, "another viewer is billed apart"


def test_fetching_ahead_cannot_bill_ahead() -> None:
    tracker = Tracker(TARGET)
    burst = [tracker.note(Fetch(1, 1, seq, 2.0, T0 + seq * 0.01)) for seq in range(5)]
    assert burst == [2, 0, 0, 0, 0], "one target duration of slack; the rest waits"
    assert tracker.release(1, 1, T0 + 3) == 3, "credited as wall time passes (playlist polls)"
    assert tracker.note(Fetch(1, 1, 2, 2.0, T0 + 60)) == 5, "a retry adds nothing; time does"
    assert tracker.release(1, 1, T0 + 61) == 0, "all 10 s fetched are billed, no more"
    assert tracker.note(Fetch(1, 1, 5, 2.0, T0 + 62)) == 2
    assert tracker.note(Fetch(1, 1, 6, 2.0, T0 - 100)) == 0, "a clock going back credits nothing"


def test_a_viewer_leaving_after_a_burst_pays_only_its_time() -> None:
    tracker = Tracker(TARGET)
    burst = sum(tracker.note(Fetch(1, 1, seq, 2.0, T0 + 0.1)) for seq in range(3))
    assert burst == 2, "3 segments fetched at once, then the viewer left: 2 s billed, not 6"
    state = tracker.state(1, 1)
    assert state is not None and state.pending_ms == 4000
    copy = Tracker(TARGET)
    _restore(copy, state)
    assert copy.release(1, 1, T0 + 10) == 4, "what waits survives a restart"


def test_out_of_order_sequences_and_bad_durations() -> None:
    tracker = Tracker(TARGET)
    for index, seq in enumerate((5, 3, 4, 9, 7, 8, 6)):
        tracker.note(Fetch(1, 1, seq, 1.0, T0 + index))
    assert tracker.note(Fetch(1, 1, 20, float("nan"), T0 + 100)) == 0
    assert tracker.note(Fetch(1, 1, 21, -2.0, T0 + 100)) == 0
    (due,) = tracker.pending()
    assert due.sequences == [[3, 9], [20, 21]] and due.ticks_to == 7


def test_free_preview() -> None:
    tracker = Tracker(TARGET, free_preview=5)
    ticks = [tracker.note(Fetch(1, 1, seq, 2.0, T0 + seq * 2)) for seq in range(5)]
    assert ticks == [0, 0, 1, 2, 2]  # 10 s watched, 5 free
    (due,) = tracker.pending()
    assert (due.ticks_to, due.content_ms) == (5, 10_000)


def test_pending_and_mark_posted() -> None:
    tracker = Tracker(TARGET)
    tracker.note(Fetch(1, 1, 0, 2.0, T0))
    (due,) = tracker.pending()
    tracker.note(Fetch(1, 1, 1, 2.0, T0 + 2))  # arrives while the flush writes
    tracker.mark_posted(1, 1, due.ticks_to, version=due.version)
    (again,) = tracker.pending()
    assert (again.ticks_from, again.ticks_to) == (2, 4)
    tracker.mark_posted(1, 1, again.ticks_to, version=again.version)
    assert tracker.pending() == [] and tracker.unposted(1, 1) == 0
    assert tracker.evict_idle(T0 + 1) == [] and tracker.evict_idle(T0 + 3) == [(1, 1)]


@settings(max_examples=200, deadline=None)
@given(
    steps=fetch_steps,
    lengths=durations,
    cut=st.integers(0, 120),
    preview=st.sampled_from([0.0, 3.0]),
)
def test_restore_round_trip_equals_an_uninterrupted_run(
    steps: list[tuple[int, str, float]], lengths: list[float], cut: int, preview: float
) -> None:
    fetches = list(_fetches(steps, lengths))
    whole = Tracker(TARGET, free_preview=preview)
    total = sum(whole.note(fetch) for fetch in fetches)

    before = Tracker(TARGET, free_preview=preview)
    posted = sum(before.note(fetch) for fetch in fetches[:cut])
    after = Tracker(TARGET, free_preview=preview)
    for due in before.pending():  # what a flush saves
        _restore(after, due)
    assert after.pending() == []
    resumed = sum(after.note(fetch) for fetch in fetches[cut:])
    assert posted + resumed == total
    assert _state(after) == _state(whole)
    latest = max((fetch.at for fetch in fetches), default=T0)
    for fetch in fetches:  # waiting content is released by activity at the latest time seen
        after.release(fetch.viewer_id, fetch.session_id, latest)
    assert sum(after.note(fetch) for fetch in fetches) == 0, "replayed fetches bill nothing"


# -- fetches fed out of time order (CDN log files read in any order) ----------------------------
@settings(max_examples=300, deadline=None)
@given(
    steps=fetch_steps,
    lengths=durations,
    preview=st.sampled_from([0.0, 3.0]),
    order=st.randoms(use_true_random=False),
)
def test_any_order_of_logged_fetches_credits_the_same_once_released(
    steps: list[tuple[int, str, float]], lengths: list[float], preview: float, order: Any
) -> None:
    """Logged fetches fed in any order (each backdating the first fetch), then released at
    the latest time: the same content and ticks as in time order, within the cap counted from
    the earliest fetch."""
    fetches = list(_fetches(steps, lengths))
    if not fetches:
        return
    latest = max(fetch.at for fetch in fetches)

    def fed(sequence: list[Fetch]) -> tuple[int, int, list[list[int]], float] | None:
        tracker = Tracker(TARGET, free_preview=preview)
        for fetch in sequence:
            tracker.note(fetch)
            tracker.backdate(fetch.viewer_id, fetch.session_id, fetch.at)
        tracker.release(7, 1, latest)
        return _state(tracker)

    in_time = fed(sorted(fetches, key=lambda fetch: fetch.at))
    shuffled = list(fetches)
    order.shuffle(shuffled)
    assert fed(shuffled) == in_time
    assert in_time is not None
    earliest_ms = round(min(fetch.at for fetch in fetches) * 1000)
    assert in_time[1] <= round(latest * 1000) - earliest_ms + round(TARGET * 1000)
    assert in_time[3] == earliest_ms / 1000


def test_a_backdated_first_fetch_is_saved_and_restored() -> None:
    tracker = Tracker(TARGET)
    late = [tracker.note(Fetch(1, 1, seq, 2.0, T0 + 100 + seq * 2)) for seq in range(50, 100)]
    assert sum(late) == 100
    (due,) = tracker.pending()
    tracker.mark_posted(1, 1, due.ticks_to, version=due.version)
    for seq in range(50):  # the earlier file, read second: all waits under the cap at first
        tracker.note(Fetch(1, 1, seq, 2.0, T0 + seq * 2))
        tracker.backdate(1, 1, T0 + seq * 2)
    (due,) = tracker.pending()
    assert due.first_fetch_at == T0, "the lowered first fetch is to be saved"
    copy = Tracker(TARGET)
    _restore(copy, due)
    assert copy.last_seen(1, 1) == T0 + 98, "at least what the content credited says"
    for restarted in (tracker, copy):
        restarted.release(1, 1, T0 + 198)
        state = restarted.state(1, 1)
        assert state is not None and state.first_fetch_at == T0
        assert (state.content_ms, state.ticks_to) == (200_000, 200), "all 200 s, none held"
