"""
Property-based tests: PCM decoding, re-chunking, HintMatcher and OutputLimiter invariants.

Hypothesis draws the inputs (any bytes, block sizes, gaps, formats, message sequences); each test
states what must hold for all of them. Example counts are kept small so the file runs in seconds.
"""

import numpy as np
from hypothesis import given, settings, strategies as st

from kb_ros.audio.pcm import AudioFormat, PcmError, decode_pcm, encode_pcm
from kb_ros.audio.stream import PcmChunkStream
from kb_ros.boosting.hint_matcher import HintMatcher
from kb_ros.boosting.limiter import ENERGY_FLOOR_DBFS, OutputLimiter

NS_PER_SAMPLE = 62_500
CHUNK_NS = 8_000_000
CODECS = (("F32LE", "wave"), ("S16LE", "wave"), ("S16LE", "mulaw"))
FORMATS = [AudioFormat(channels=c, sample_format=f, coding_format=coding)
           for c in (1, 2, 3) for f, coding in CODECS]
FAST = settings(max_examples=60, deadline=None)


@FAST
@given(payload=st.binary(max_size=2048), fmt=st.sampled_from(FORMATS))
def test_decoding_any_bytes_gives_finite_frames_or_a_clear_error(payload, fmt):
    try:
        audio = decode_pcm(payload, fmt)
    except PcmError as err:
        assert str(err)
        assert len(payload) % fmt.bytes_per_frame or fmt.sample_format == "F32LE"
        return
    frames = len(payload) // fmt.bytes_per_frame
    assert audio.dtype == np.float32 and audio.shape == (frames, fmt.channels)
    assert np.isfinite(audio).all()
    if fmt.sample_format == "S16LE":
        assert np.abs(audio).max(initial=0) <= 1.0


@FAST
@given(fmt=st.sampled_from(FORMATS), data=st.data())
def test_encoding_then_decoding_returns_the_audio(fmt, data):
    frames = data.draw(st.integers(0, 300))
    seed = data.draw(st.integers(0, 2**32 - 1))
    audio = np.random.default_rng(seed).uniform(-1, 1, (frames, fmt.channels)).astype(np.float32)
    back = decode_pcm(encode_pcm(audio, fmt), fmt)
    tolerance = {"F32LE": 0.0, "S16LE": 1 / 32768}[fmt.sample_format]
    if fmt.coding == "mulaw":
        tolerance = 0.032 * np.abs(audio) + 1 / 4096  # logarithmic steps: relative error
    assert back.shape == audio.shape and np.all(np.abs(back - audio) <= tolerance)


def _blocks(sizes, gaps, first_sample):
    """Place blocks on a sample counter: block i starts gaps[i] frames after block i-1 ends."""
    starts, position = [], first_sample
    for size, gap in zip(sizes, gaps):
        position += gap
        starts.append(position)
        position += size
    return starts


@FAST
@given(fmt=st.sampled_from(FORMATS),
       sizes=st.lists(st.integers(1, 400).filter(lambda n: n != 128), min_size=1, max_size=30),
       gap_choices=st.lists(st.one_of(st.just(0), st.integers(81, 3000)), min_size=30,
                            max_size=30),
       first_sample=st.integers(10**9, 10**9 + 10**6), seed=st.integers(0, 2**32 - 1))
def test_rechunking_gives_one_chunk_per_grid_chunk_at_its_exact_stamp(
        fmt, sizes, gap_choices, first_sample, seed):
    """Any block sizes, gaps (lost blocks) and formats: every covered grid chunk, once, exact."""
    rng = np.random.default_rng(seed)
    gaps = [0] + gap_choices[1:len(sizes)]
    starts = _blocks(sizes, gaps, first_sample)
    stream = PcmChunkStream(fmt)
    base = first_sample - first_sample % 128
    expected = np.zeros((starts[-1] + sizes[-1] - base, fmt.channels), np.float32)
    out = []
    for start, size in zip(starts, sizes):
        payload = encode_pcm(rng.uniform(-1, 1, (size, fmt.channels)), fmt)
        expected[start - base:start - base + size] = decode_pcm(payload, fmt)
        out += stream.push(start * NS_PER_SAMPLE, payload)
    grid = range(base // 128, (starts[-1] + sizes[-1]) // 128)
    assert [c.stamp_ns for c in out] == [j * CHUNK_NS for j in grid]
    for j, chunk in zip(grid, out):
        np.testing.assert_array_equal(chunk.audio, expected[j * 128 - base:(j + 1) * 128 - base])
    assert not stream.drops


@FAST
@given(gaps=st.lists(st.one_of(st.just(0), st.integers(81, 15_000)), min_size=1, max_size=40),
       offset_ns=st.integers(1, 10**9))
def test_chunk_sized_blocks_keep_their_own_stamps(gaps, offset_ns):
    """128-frame blocks (any start, lost ones) pass through: one chunk each, stamp unchanged."""
    stream = PcmChunkStream(AudioFormat())
    stamps, position = [], 10**18 + offset_ns
    for gap in gaps:
        position += gap * NS_PER_SAMPLE
        stamps.append(position)
        position += CHUNK_NS
    out = [c for s in stamps
           for c in stream.push(s, encode_pcm(np.zeros((128, 1), np.float32), AudioFormat()))]
    assert [c.stamp_ns for c in out] == stamps


T0 = 7_000_000_000
# A hint names the chunk `age` chunks before the current one (< 0: from the future), or any stamp.
HINT_TARGETS = st.one_of(st.integers(-6, 12).map(lambda age: ("age", age)),
                         st.integers(-2000, 2000).map(lambda age: ("age", age)),
                         st.integers(0, 2**62).map(lambda stamp: ("stamp", stamp)))
EVENTS = st.lists(st.one_of(
    st.tuples(st.just("chunk"), st.sampled_from([1] * 6 + [0, 2, 5, -1, -4]), st.floats(0, 1)),
    st.tuples(st.just("hint"), HINT_TARGETS, st.floats(0, 1),
              st.sampled_from(["ok", "ok", "ok", "nan", "short", "stranger"]))),
    min_size=40, max_size=200)


@settings(max_examples=50, deadline=None)
@given(events=EVENTS, min_age=st.integers(0, 3), span=st.integers(0, 8))
def test_matcher_invariants_under_any_traffic(events, min_age, span):
    """Hints and chunks in any order, stamps and levels: the contract's invariants hold."""
    max_age, history = min_age + span, 16
    m = HintMatcher(min_age, max_age, accepted_producers=frozenset({"large"}),
                    history_chunks=history)
    chunk_index, offers, used = 0, 0, set()
    input_power, previous = {}, None  # what each hint may carry: its input window's power
    for event in events:
        if event[0] == "chunk":  # mostly the next chunk; some repeated, skipped or stepped back
            chunk_index += event[1]
            stamp, level = T0 + chunk_index * CHUNK_NS, np.float32(event[2])
            if previous is not None and stamp <= previous[0]:  # a new timeline: all forgotten
                used, input_power, previous = set(), {}, None
            contiguous = previous is not None and stamp - previous[0] == CHUNK_NS
            input_power[stamp] = (previous[1] ** 2 + level ** 2) / 2 if contiguous else level ** 2
            previous = (stamp, level)
            hint = m.on_chunk(stamp, np.full((128, 1), level, np.float32))
            if hint is not None:
                assert min_age <= hint.age_chunks <= max_age
                assert hint.age_chunks == round((stamp - hint.stamp_ns) / CHUNK_NS)
                assert hint.stamp_ns not in used  # each hint serves one chunk of its timeline
                used.add(hint.stamp_ns)
                assert float(hint.audio[0, 0]) ** 2 <= max(
                    input_power[hint.stamp_ns], 1e-6) * 10 * (1 + 1e-5)  # 10 dB margin
        else:
            _, (how, target), level, kind = event
            stamp = T0 + (chunk_index - target) * CHUNK_NS if how == "age" else target
            audio = np.full((127 if kind == "short" else 128, 1),
                            np.nan if kind == "nan" else level, np.float32)
            outcome = m.offer(stamp, audio, "other" if kind == "stranger" else "large")
            assert outcome is None or outcome in ("late", "duplicate") or \
                m.counters.invalid[outcome] > 0
            offers += 1
        c = m.counters
        assert c.hits + c.misses == c.chunks
        assert offers == c.hits + c.late + c.duplicates + sum(c.invalid.values()) + m.pending
        assert sum(c.age_histogram.values()) == c.hits
        assert m.pending <= max_age + 4 + 1  # max_early_chunks 4, as constructed
        assert len(m._input_power) <= history and len(m._seen) <= history


@FAST
@given(levels=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 80)), min_size=1, max_size=40),
       margin_db=st.floats(0, 20), seed=st.integers(0, 2**32 - 1))
def test_limiter_bounds_every_chunk_and_never_amplifies(levels, margin_db, seed):
    """Any input level and any model gain (0-80 dB over it): within margin and full scale."""
    rng = np.random.default_rng(seed)
    limiter = OutputLimiter(margin_db)
    floor = 10 ** (ENERGY_FLOOR_DBFS / 10)
    previous_tail = np.zeros(64)
    for input_level, gain_db in levels:
        model_input = (input_level * rng.uniform(-1, 1, (128, 1))).astype(np.float32)
        output = (model_input * 10 ** (gain_db / 20) * rng.uniform(0, 1, (128, 1))
                  ).astype(np.float32)
        limited = limiter.process(output, model_input)
        assert np.isfinite(limited).all() and np.abs(limited).max() <= 1.0 + 1e-6
        assert np.all(np.abs(limited) <= np.abs(output))
        window = np.concatenate([previous_tail, model_input[:64, 0].astype(np.float64)])
        allowed = max(np.mean(window ** 2), floor) * 10 ** (margin_db / 10)
        assert np.mean(limited[:, 0].astype(np.float64) ** 2) <= allowed * (1 + 1e-5)
        previous_tail = model_input[64:, 0].astype(np.float64)
