"""CatchUp: chunks far behind skip the model, delayed like it; deadline misses are counted."""

import numpy as np
import pytest

from kb_ros.boosting.catch_up import CatchUp

DELAY = 64


def chunks(n, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((128, channels)).astype(np.float32) for _ in range(n)]


class Resets:
    def __init__(self):
        self.count = 0

    def __call__(self):
        self.count += 1


def test_on_time_chunks_run_the_model_and_miss_no_deadline():
    resets = Resets()
    guard = CatchUp(max_lag_ms=100.0, deadline_ms=16.0, delay_frames=DELAY, sources=1,
                    on_resume=resets)
    for k, chunk in enumerate(chunks(300)):
        latency = 1e6 + 12.0 + (k % 5)  # stamps far in the past (a replayed bag): offset only
        assert guard.bypass(chunk, latency) is None
        guard.published(chunk, latency + 4.0)
    assert vars(guard.counters) == {"deadline_misses": 0, "bypassed": 0, "catch_ups": 0,
                                    "max_lag_ms": 8.0}
    assert resets.count == 0


@pytest.mark.parametrize("model_gain", [0.25, -0.25])
def test_late_chunks_pass_through_delayed_as_the_model_would_then_the_model_restarts(
        model_gain):
    resets = Resets()
    guard = CatchUp(max_lag_ms=100.0, deadline_ms=16.0, delay_frames=DELAY, sources=2,
                    on_resume=resets)
    stream = chunks(40, channels=3)
    mono = np.concatenate([c.mean(axis=1) for c in stream])
    delayed = np.concatenate([np.zeros(DELAY, np.float32), mono])
    lags = [10.0] * 10 + [90.0, 150.0, 140.0, 120.0, 90.0, 40.0, 34.0] + [10.0] * 23
    bypassed = []
    for k, (chunk, lag) in enumerate(zip(stream, lags)):
        expected = delayed[k * 128:(k + 1) * 128]
        out = guard.bypass(chunk, lag)
        if out is None:  # a "model" 12 dB quieter than its input, as an enhancer is, or
            out = np.stack([model_gain * expected] * 2, axis=1)  # also inverted
        else:
            bypassed.append(k)
            np.testing.assert_allclose(out, np.stack([model_gain * expected] * 2, axis=1),
                                       rtol=1e-5, atol=1e-7)
        guard.published(out, lag + 4.0)
    # Beyond 100 ms of lag the model is bypassed until the lag is down to 25 ms (34 ms lag
    # on a best case of 10 ms: 24 ms).
    assert bypassed == [11, 12, 13, 14, 15]
    assert resets.count == 1  # once, before chunk 16
    assert guard.counters.bypassed == 5 and guard.counters.catch_ups == 1


def test_deadline_misses_count_chunks_published_late_beyond_the_best_case():
    guard = CatchUp(max_lag_ms=0.0, deadline_ms=16.0, delay_frames=DELAY, sources=1,
                    on_resume=Resets())
    # Each chunk starts 4 ms before it is published; the best start is 8 ms after its stamp,
    # so the publish lags are 4, 5, 32, 21, 20.5 and 4.5 ms.
    published = [12.0, 13.0, 40.0, 29.0, 28.5, 12.5]
    for chunk, latency in zip(chunks(len(published)), published):
        assert guard.bypass(chunk, latency - 4.0) is None  # max_lag 0: never bypasses
        guard.published(chunk, latency)
    assert guard.counters.deadline_misses == 3
    assert guard.counters.max_lag_ms == 32.0
