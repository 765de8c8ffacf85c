"""The emulated link: delay, jitter, loss, duplication and order, reproducible from a seed."""

import pytest

from kb_ros.transport.emulated_link import EmulatedLink, LinkProfile

MS = 1_000_000


def drain(link, horizon_ms=1000, step_ms=1):
    out = []
    for t in range(0, horizon_ms, step_ms):
        out += [(t, item) for item in link.due(t * MS)]
    return out


def offer_all(link, n, period_ms=8):
    for i in range(n):
        link.offer(i, i * period_ms * MS)


def test_fixed_delay():
    link = EmulatedLink(LinkProfile(delay_ms=24))
    offer_all(link, 10)
    assert drain(link) == [(i * 8 + 24, i) for i in range(10)]


def test_jitter_without_reorder_keeps_fifo_and_bounds():
    link = EmulatedLink(LinkProfile(delay_ms=10, jitter_ms=30), seed=3)
    offer_all(link, 50)
    got = drain(link)
    assert [i for _, i in got] == list(range(50))
    assert all(10 <= t - i * 8 <= 10 + 30 + 30 for t, i in got)


def test_jitter_with_reorder_reorders():
    link = EmulatedLink(LinkProfile(delay_ms=10, jitter_ms=30, reorder=True), seed=3)
    offer_all(link, 50)
    order = [i for _, i in drain(link)]
    assert sorted(order) == list(range(50)) and order != list(range(50))


def test_loss_and_duplication_rates_and_seed_reproducibility():
    def run(seed):
        link = EmulatedLink(LinkProfile(loss=0.3, duplicate=0.2), seed=seed)
        offer_all(link, 2000, period_ms=0)
        return [i for _, i in drain(link, 2)], link.stats

    items, stats = run(7)
    assert stats.lost == pytest.approx(600, rel=0.15)
    assert stats.duplicated == pytest.approx(0.2 * 1400, rel=0.2)
    assert len(items) == 2000 - stats.lost + stats.duplicated
    assert run(7)[0] == items and run(8)[0] != items


def test_invalid_profiles_are_rejected():
    with pytest.raises(ValueError):
        LinkProfile(loss=1.5)
    with pytest.raises(ValueError):
        LinkProfile(delay_ms=-1)


def test_outage_loses_exactly_what_is_offered_inside_the_window():
    link = EmulatedLink(LinkProfile(delay_ms=5))
    link.schedule_outage(40 * MS, 80 * MS)
    offer_all(link, 20)  # offered at 0, 8, ..., 152 ms
    delivered = [item for _, item in drain(link)]
    assert delivered == [i for i in range(20) if not 40 <= i * 8 < 80]
    assert link.stats.lost_in_outage == 5 and link.stats.lost == 0
    with pytest.raises(ValueError):
        link.schedule_outage(10 * MS, 10 * MS)
