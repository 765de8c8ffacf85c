"""HintMatcher: every rule of DESIGN.md's contract, the hint energy check, random traffic."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kb_ros.audio.pcm import AudioFormat
from kb_ros.boosting.hint_matcher import HintMatcher

CHUNK_NS = 8_000_000
T0 = 5_000_000_000
GOOD = frozenset({"large-abc"})


def stamp(k):
    return T0 + k * CHUNK_NS


INPUT_LEVEL = 0.1


def hint(value=0.1, frames=128, sources=1):
    return np.full((frames, sources), value, np.float32)


def tick(m, k, audio=None):
    """Register chunk k with the matcher; its input is ``INPUT_LEVEL`` unless given."""
    return m.on_chunk(stamp(k), hint(INPUT_LEVEL) if audio is None else audio)


def matcher(**kw):
    kw.setdefault("accepted_producers", GOOD)
    return HintMatcher(1, 8, **kw)


def run_chunks(m, ks):
    return [tick(m, k) for k in ks]


def test_hit_with_exact_age():
    m = matcher()
    run_chunks(m, range(10))
    assert m.offer(stamp(4), hint(), "large-abc") is None
    used = tick(m, 10)
    assert used.age_chunks == 6 and used.stamp_ns == stamp(4)
    assert m.counters.hits == 1 and m.counters.misses == 10
    assert m.counters.age_histogram == {6: 1}


def test_freshest_wins_and_older_ones_age_out_as_late():
    m = matcher()
    run_chunks(m, range(10))
    m.offer(stamp(3), hint(0.03), "large-abc")
    m.offer(stamp(7), hint(0.07), "large-abc")
    m.offer(stamp(5), hint(0.05), "large-abc")
    used = tick(m, 10)
    assert used.stamp_ns == stamp(7) and used.age_chunks == 3
    assert tick(m, 11).stamp_ns == stamp(5)
    run_chunks(m, range(12, 13))
    assert m.counters.late == 1  # stamp 3 reached age 9 > max_age 8 before being fresh


def test_late_hint_is_dropped_and_counted():
    m = matcher()
    run_chunks(m, range(20))
    assert m.offer(stamp(10), hint(), "large-abc") == "late"
    assert tick(m, 20) is None
    assert m.counters.late == 1 and m.counters.hits == 0


def test_age_below_min_waits_for_next_chunk():
    m = matcher()
    run_chunks(m, range(5))
    m.offer(stamp(4), hint(), "large-abc")  # age 0 now, min_age 1
    assert tick(m, 5).age_chunks == 1


@pytest.mark.parametrize("bad_stamp", [stamp(3) + 1, stamp(-30), stamp(500), 0])
def test_unknown_stamp_is_invalid(bad_stamp):
    m = matcher()
    run_chunks(m, range(10))
    assert m.offer(bad_stamp, hint(), "large-abc") == "unknown_stamp"
    assert m.counters.invalid["unknown_stamp"] == 1


def test_early_hint_waits_for_its_chunk():
    m = matcher()
    run_chunks(m, range(5))
    assert m.offer(stamp(6), hint(), "large-abc") is None
    run_chunks(m, [5, 6])
    assert tick(m, 7).stamp_ns == stamp(6)


def test_early_hint_for_a_chunk_that_never_comes_is_invalid():
    m = matcher()
    run_chunks(m, range(5))
    m.offer(stamp(6) + 7, hint(), "large-abc")
    run_chunks(m, range(5, 9))
    assert m.counters.invalid["unknown_stamp"] == 1


@pytest.mark.parametrize("audio,reason", [
    (hint(frames=127), "wrong_size"),
    (hint(sources=2), "wrong_size"),
    (np.full((128, 1), np.nan, np.float32), "non_finite"),
    (np.full((128, 1), np.inf, np.float32), "non_finite"),
])
def test_malformed_hint_is_invalid(audio, reason):
    m = matcher()
    run_chunks(m, range(10))
    assert m.offer(stamp(5), audio, "large-abc") == reason
    assert tick(m, 10) is None
    assert m.counters.invalid[reason] == 1


def test_hint_from_untrained_producer_or_without_info_is_invalid():
    m = matcher()
    run_chunks(m, range(10))
    assert m.offer(stamp(5), hint(), "other-model") == "unknown_producer"
    assert m.offer(stamp(5), hint(), None) == "no_hint_info"


def test_duplicates_are_counted_once_used_or_pending():
    m = matcher()
    run_chunks(m, range(10))
    m.offer(stamp(5), hint(), "large-abc")
    assert m.offer(stamp(5), hint(), "large-abc") == "duplicate"
    tick(m, 10)
    assert m.offer(stamp(5), hint(), "large-abc") == "duplicate"
    assert m.counters.duplicates == 2 and m.counters.hits == 1


def test_used_hint_is_never_matched_again_in_its_timeline():
    """A consumed hint re-offered while its stamp is known, or after it left the history."""
    m = matcher(history_chunks=16)
    run_chunks(m, range(5))
    m.offer(stamp(3), hint(), "large-abc")
    assert tick(m, 5).stamp_ns == stamp(3)
    assert m.offer(stamp(3), hint(), "large-abc") == "duplicate"
    run_chunks(m, range(6, 30))
    assert m.offer(stamp(3), hint(), "large-abc") == "unknown_stamp"
    assert all(h is None for h in run_chunks(m, range(30, 40)))


def test_stamp_stepping_back_starts_a_new_timeline():
    """Found by hypothesis: hints of the old timeline must not serve the new one's chunks."""
    m = matcher(history_chunks=16)
    run_chunks(m, range(30))
    m.offer(stamp(28), hint(), "large-abc")
    m.offer(stamp(29), hint(), "large-abc")
    assert tick(m, 30).stamp_ns == stamp(29)  # stamp 28 stays pending
    assert tick(m, 2) is None  # the capture restarted: stamp 28 is no hint for it
    assert m.counters.timeline_restarts == 1 and m.counters.invalid["timeline_restart"] == 1
    assert m.pending == 0
    run_chunks(m, range(3, 29))
    assert m.offer(stamp(26), hint(), "large-abc") is None  # new audio under an old stamp
    assert tick(m, 29).stamp_ns == stamp(26)


def test_age_counts_missing_input_chunks():
    m = matcher()
    run_chunks(m, [0, 1, 2, 5, 6])  # chunks 3 and 4 never arrived
    m.offer(stamp(2), hint(), "large-abc")
    assert tick(m, 7).age_chunks == 5


def test_pending_hints_are_bounded_under_flood():
    m = matcher()
    run_chunks(m, range(10))
    for i in range(1000):
        m.offer(stamp(10) + 1 + i, hint(), "large-abc")
    assert m.pending <= m.max_age + m.max_early_chunks + 1
    assert m.counters.invalid["overflow"] > 900


def test_hint_louder_than_its_input_by_more_than_the_margin_is_invalid():
    m = matcher()  # default margin 10 dB over the input's 0.1 (-20 dBFS)
    run_chunks(m, range(10))
    assert m.offer(stamp(4), hint(0.3), "large-abc") is None  # +9.5 dB: plausible
    assert m.offer(stamp(5), hint(0.4), "large-abc") == "implausible_energy"  # +12 dB
    assert m.counters.invalid == {"implausible_energy": 1}
    assert tick(m, 10).stamp_ns == stamp(4)


def test_early_hint_is_checked_when_its_chunk_arrives():
    m = matcher()
    run_chunks(m, range(5))
    assert m.offer(stamp(6), hint(0.5), "large-abc") is None  # its input is not known yet
    tick(m, 5)
    tick(m, 6, hint(0.5))  # a loud chunk 6: the hint is plausible and kept
    assert m.offer(stamp(8), hint(0.9), "large-abc") is None
    assert tick(m, 7).stamp_ns == stamp(6)
    assert tick(m, 8) is None  # chunks 7 and 8 are quiet after all: the early hint goes
    assert m.counters.invalid == {"implausible_energy": 1}
    assert tick(m, 9) is None


def test_hint_energy_is_compared_with_the_input_window_it_covers():
    """The hint for stamp s estimates the last 64 input samples before s and the first 64 after."""
    quiet, loud = np.zeros((64, 1), np.float32), np.full((64, 1), 0.5, np.float32)
    m = matcher()
    run_chunks(m, range(3))
    tick(m, 3, np.concatenate([quiet, loud]))  # loud only in what hint 4 covers
    tick(m, 4, np.concatenate([quiet, loud]))  # and in what hint 5 covers
    tick(m, 5, np.concatenate([quiet, quiet]))
    assert m.offer(stamp(4), hint(0.5), "large-abc") is None
    assert m.offer(stamp(5), hint(0.5), "large-abc") is None
    assert m.offer(stamp(3), hint(0.5), "large-abc") == "implausible_energy"


def test_near_silent_input_does_not_reject_quiet_hints():
    m = matcher()
    silence = np.zeros((128, 1), np.float32)
    for k in range(10):
        tick(m, k, silence)
    assert m.offer(stamp(4), hint(0.002), "large-abc") is None  # -54 dBFS: within the floor
    assert m.offer(stamp(5), hint(0.01), "large-abc") == "implausible_energy"  # -40 dBFS


def test_energy_check_can_be_turned_off():
    m = matcher(energy_margin_db=None)
    run_chunks(m, range(10))
    assert m.offer(stamp(4), hint(1.0), "large-abc") is None


def test_oversized_payload_is_invalid_without_decoding():
    m = matcher()
    run_chunks(m, range(10))
    assert m.offer_pcm(stamp(4), b"\0" * (10 << 20), AudioFormat(), "large-abc") == "oversized"
    assert m.offer_pcm(stamp(4), b"\0" * 511, AudioFormat(), "large-abc") == "bad_payload"
    assert m.offer_pcm(stamp(4), b"\0" * 1024, AudioFormat(), "large-abc") == "wrong_size"
    assert m.counters.invalid == {"oversized": 1, "bad_payload": 1, "wrong_size": 1}


@settings(max_examples=50, deadline=None)
@given(delays=st.lists(st.integers(0, 14), min_size=30, max_size=120),
       lost=st.sets(st.integers(0, 119), max_size=40))
def test_matcher_properties_under_random_delays(delays, lost):
    m = matcher()
    n = len(delays)
    arrivals = {}
    for j, d in enumerate(delays):
        if j not in lost:
            arrivals.setdefault(j + d, []).append(j)
    for t in range(n + 15):
        for j in arrivals.get(t, []):
            m.offer(stamp(j), hint(j / 1000), "large-abc")
        used = tick(m, t)
        if used is not None:
            assert 1 <= used.age_chunks <= 8
            assert used.stamp_ns == stamp(t - used.age_chunks)
            assert used.audio[0, 0] == pytest.approx((t - used.age_chunks) / 1000)
    c = m.counters
    assert c.hits + c.misses == c.chunks == n + 15
    assert c.hits + c.late + m.pending <= n - len(lost & set(range(n)))


def test_non_finite_payload_is_told_apart_from_a_bad_one():
    m = matcher()
    run_chunks(m, range(10))
    nan = np.full(128, np.nan, "<f4").tobytes()
    assert m.offer_pcm(stamp(4), nan, AudioFormat(), "large-abc") == "non_finite"
