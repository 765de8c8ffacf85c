"""
capture_node: publishes 8 ms chunks from a WAV file (paced in real time or faster) or a mic.

Each chunk's stamp is the capture time of its first sample, from a sample counter anchored once
at the start: exactly 8 ms apart, whatever the scheduling jitter of the publishing thread.
A source that cannot be opened or fails (a missing or unreadable WAV, a missing or unplugged
microphone) is logged in one line; ``on_source_error`` then shuts the node down (exit status
1) or retries every ``retry_period_s``, so a device that appears later is picked up.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from kb_ros.audio.clock import CHUNK_FRAMES, SAMPLE_RATE, ChunkClock
from kb_ros.audio.pcm import AudioFormat, encode_pcm
from kb_ros.audio.wav import read_wav
from kb_ros.resources import demo_sample_path
from kb_ros.nodes.common import InfoAnnouncer, declare_all
from kb_ros.nodes.runner import run_node
from kb_ros.transport import qos
from kb_ros.transport.backend import Backend, ParamSpec
from kb_ros.transport.messages import AUDIO_STAMPED, AudioChunkMsg, AudioInfoMsg

PARAMS = [
    ParamSpec("source", "file", "file: stream a WAV file; mic: capture with sounddevice",
              read_only=True, choices=("file", "mic")),
    ParamSpec("wav", "", "WAV file for source=file (resampled to 16 kHz); empty: the shipped "
              "demo mixture", read_only=True),
    ParamSpec("rate", 1.0, "Pacing for source=file: 1.0 real time, 4.0 four times faster, "
              "0.0 as fast as possible", read_only=True, float_range=(0.0, 1000.0)),
    ParamSpec("loop", False, "Start the file again when it ends", read_only=True),
    ParamSpec("sample_format", "F32LE", "PCM format of `audio`", read_only=True,
              choices=("F32LE", "S16LE")),
    ParamSpec("channels", 1, "Channels to capture for source=mic", read_only=True,
              int_range=(1, 8)),
    ParamSpec("device", "", "sounddevice input device name or index; empty: the default",
              read_only=True),
    ParamSpec("frame_id", "mic", "header.frame_id of the chunks", read_only=True),
    ParamSpec("wait_for_subscribers", 0, "Before streaming a file, wait until this many "
              "subscriptions match `audio`", read_only=True, int_range=(0, 64)),
    ParamSpec("wait_timeout_s", 10.0, "Give up waiting for subscribers after this long",
              read_only=True, float_range=(0.0, 3600.0)),
    ParamSpec("exit_on_end", True, "Shut the node down when the file ends", read_only=True),
    ParamSpec("on_source_error", "exit", "When the source cannot be opened or fails: exit "
              "(log, shut down with status 1) or retry (log, try again every retry_period_s)",
              read_only=True, choices=("exit", "retry")),
    ParamSpec("retry_period_s", 1.0, "Seconds between attempts to open a failed source",
              read_only=True, float_range=(0.01, 3600.0)),
]


class SourceError(RuntimeError):
    """The audio source could not be opened or stopped delivering."""


class CaptureNode:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.log = backend.get_logger()
        self.params = declare_all(backend, PARAMS)
        self.audio_pub = backend.create_publisher(AUDIO_STAMPED, "audio", qos.AUDIO_PUB)
        self.info = InfoAnnouncer(backend, "audio_info")
        self.published = 0
        self.exit_code = 0
        self.source_failures = 0
        self.format: AudioFormat | None = None
        self._stop = threading.Event()
        retry = f", retrying every {self.params['retry_period_s']} s on errors" if (
            self.params["on_source_error"] == "retry") else ""
        self.path = self.params["wav"] or str(demo_sample_path("mix"))
        if self.params["source"] == "file":
            self.log.info(f"ready: streaming {self.path} at rate {self.params['rate']}{retry}")
        else:
            self.log.info(f"ready: capturing from the microphone{retry}")
        self._worker = threading.Thread(target=self._run, daemon=True)
        self._worker.start()

    def finish(self) -> None:
        """Stop streaming before the middleware closes: no publish may race the teardown."""
        self._stop.set()
        if self._worker is not threading.current_thread():
            self._worker.join(timeout=2.0)

    def _announce(self, fmt: AudioFormat) -> None:
        if fmt != self.format:
            self.format = fmt
            self.info.announce(AudioInfoMsg.from_format(fmt))

    def _publish(self, clock: ChunkClock, index: int, chunk: np.ndarray) -> None:
        assert self.format is not None
        self.audio_pub.publish(AudioChunkMsg(clock.stamp_ns(index), encode_pcm(chunk, self.format),
                                             self.params["frame_id"]))
        self.published += 1

    def _run(self) -> None:
        """Stream in the worker thread; an unexpected failure there ends the node (status 1)."""
        try:
            self._stream_source()
        except Exception as err:  # the thread's last resort: never a node spinning without it
            if self._stop.is_set():  # the middleware is closing under a last publish
                return
            self.log.fatal(f"capture failed: {err!r}; shutting down")
            self.exit_code = 1
            self.backend.shutdown()

    def _stream_source(self) -> None:
        """Stream the source; on a source error exit or retry, per ``on_source_error``."""
        stream = self._stream_file if self.params["source"] == "file" else self._stream_mic
        ended = False
        while True:
            try:
                ended = stream()
                break
            except SourceError as err:
                if not self._source_failed(err):
                    break
        if self.exit_code:
            return
        self.log.info(f"{'end of file' if ended else 'stopped'}: published {self.published} "
                      "chunks")
        if ended and self.params["exit_on_end"]:
            self.backend.shutdown()

    def _source_failed(self, err: SourceError) -> bool:
        """Log a source failure; return True to try again after the retry period."""
        self.source_failures += 1
        n = self.source_failures
        if self.params["on_source_error"] == "exit":
            self.log.error(f"audio source failed: {err}; shutting down (on_source_error=exit)")
            self.exit_code = 1
            self.backend.shutdown()
            return False
        if n == 1 or n % 10 == 0:  # an absent device may stay absent for hours: stay readable
            self.log.error(f"audio source failed: {err}; attempt {n}, retrying every "
                           f"{self.params['retry_period_s']} s")
        return not self._stop.wait(self.params["retry_period_s"])

    def _opened(self, what: str) -> None:
        suffix = f" after {self.source_failures} failed attempts" if self.source_failures else ""
        self.log.info(f"opened {what}{suffix}")

    def _wait_for_subscribers(self) -> None:
        wanted = self.params["wait_for_subscribers"]
        deadline = time.monotonic() + self.params["wait_timeout_s"]
        while wanted and self.audio_pub.matched_count() < wanted:
            if time.monotonic() > deadline or self._stop.wait(0.01):
                self.log.warning(f"streaming with {self.audio_pub.matched_count()} of {wanted} "
                                 "subscribers matched")
                return

    def _stream_file(self) -> bool:
        """Publish the file's chunks paced by ``rate``; True if it ended, False if stopped."""
        try:
            audio, _ = read_wav(self.path, sample_rate=SAMPLE_RATE)
        except (OSError, ValueError) as err:  # missing, unreadable, not a WAV, truncated
            raise SourceError(str(err)) from err
        if not len(audio):
            raise SourceError(f"{self.path} holds no audio (0 frames)")
        self._opened(f"{self.path}: {len(audio) / SAMPLE_RATE:.2f} s, {audio.shape[1]} ch")
        self._announce(AudioFormat(channels=audio.shape[1],
                                   sample_format=self.params["sample_format"]))
        pad = -len(audio) % CHUNK_FRAMES
        audio = np.concatenate([audio, np.zeros((pad, audio.shape[1]), np.float32)])
        n_chunks = len(audio) // CHUNK_FRAMES
        self._wait_for_subscribers()
        rate = self.params["rate"]
        clock = ChunkClock(self.backend.now_ns())
        t0 = time.monotonic()
        index = 0
        while not self._stop.is_set():
            k = index % n_chunks
            if rate > 0:
                # A chunk exists once its last sample has been "captured".
                delay = t0 + (index + 1) * clock.chunk_ns / 1e9 / rate - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
            self._publish(clock, index, audio[k * CHUNK_FRAMES:(k + 1) * CHUNK_FRAMES])
            index += 1
            if index == n_chunks and not self.params["loop"]:
                return True
        return False

    def _stream_mic(self) -> bool:
        """Capture until stopped (returns False); raise SourceError if the device fails."""
        from kb_ros.audio.devices import open_input_stream

        clock: ChunkClock | None = None
        index = 0

        def on_block(block: np.ndarray, first_sample_time_ns: int) -> None:
            nonlocal clock, index
            if clock is None:  # a reopened device starts a new sample counter
                clock = ChunkClock(first_sample_time_ns)
            self._publish(clock, index, block)
            index += 1

        self._announce(AudioFormat(channels=self.params["channels"],
                                   sample_format=self.params["sample_format"]))
        device = self.params["device"] or "the default input device"
        try:
            stream = open_input_stream(self.params["device"], self.params["channels"], on_block)
            stream.start()
        except Exception as err:  # PortAudio reports device problems as plain Exceptions
            raise SourceError(f"cannot open {device}: {err}") from err
        try:
            self._opened(device)
            while not self._stop.wait(0.5):
                if not stream.active:
                    raise SourceError(f"{device} stopped delivering audio (unplugged?)")
        finally:
            stream.close()
        return False


def main(argv: list[str] | None = None) -> None:
    run_node(CaptureNode, "capture_node", argv)


if __name__ == "__main__":
    main()
