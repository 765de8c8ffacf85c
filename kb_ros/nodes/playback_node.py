"""
playback_node: plays `enhanced` on a speaker or writes it to a WAV file, in stamp order.

A gap in stamps (a lost chunk) is filled with silence, so the file keeps the stream's timing.
"""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np

from kb_ros.audio.clock import CHUNK_FRAMES, SAMPLE_RATE, ChunkClock
from kb_ros.audio.pcm import AudioFormat, PcmError, decode_pcm, encode_pcm
from kb_ros.nodes.common import DropLog, declare_all
from kb_ros.nodes.runner import run_node
from kb_ros.transport import qos
from kb_ros.transport.backend import Backend, ParamSpec, subscribe_info
from kb_ros.transport.messages import AUDIO_STAMPED, AudioChunkMsg, AudioInfoMsg

MAX_GAP_CHUNKS = 125

PARAMS = [
    ParamSpec("sink", "wav", "wav: write a file; speaker: play with sounddevice",
              read_only=True, choices=("wav", "speaker")),
    ParamSpec("wav", "enhanced.wav", "Output WAV path for sink=wav (16-bit PCM)",
              read_only=True),
    ParamSpec("device", "", "sounddevice output device name or index", read_only=True),
]


class PlaybackNode:
    def __init__(self, backend: Backend) -> None:
        self.log = backend.get_logger()
        self.params = declare_all(backend, PARAMS)
        self.format = AudioFormat()
        self.drop_log = DropLog(self.log)
        self.chunks = 0
        self.gap_chunks = 0
        self._clock: ChunkClock | None = None
        self._next_index = 0
        self._sink = None
        if self.params["sink"] == "wav":
            check_writable(Path(self.params["wav"]))
        subscribe_info(backend, "enhanced_info", self.on_info)
        backend.create_subscription(AUDIO_STAMPED, "enhanced", self.on_chunk, qos.AUDIO_SUB)
        self.log.info(f"ready: {self.params['sink']} sink")

    def on_info(self, msg: AudioInfoMsg) -> None:
        try:
            fmt = msg.to_format()
        except PcmError as err:
            self.log.error(f"ignoring enhanced_info: {err}")
            return
        if self._sink is not None and fmt.channels != self.format.channels:
            self.log.error("enhanced_info changed the channel count mid-stream; ignored")
            return
        self.format = fmt

    def on_chunk(self, msg: AudioChunkMsg) -> None:
        try:
            audio = decode_pcm(msg.data, self.format)
        except PcmError as err:
            self.drop_log("bad_payload", str(err))
            return
        if self._clock is None:
            self._clock = ChunkClock(msg.stamp_ns)
        index = self._clock.chunks_between(self._clock.start_ns, msg.stamp_ns)
        if index < self._next_index:
            self.drop_log("out_of_order")
            return
        gap = min(index - self._next_index, MAX_GAP_CHUNKS)
        try:
            if gap:
                self._write(np.zeros((gap * CHUNK_FRAMES, audio.shape[1]), np.float32))
            self._write(audio)
        except OSError as err:  # a full disk, a removed folder: count it, keep the node up
            self.drop_log("sink_error", str(err))
            return
        self.gap_chunks += gap
        self._next_index = index + 1
        self.chunks += 1

    def _write(self, audio: np.ndarray) -> None:
        if self._sink is None:
            self._sink = self._open(audio.shape[1])
        if self.params["sink"] == "wav":
            self._sink.writeframes(encode_pcm(audio, AudioFormat(audio.shape[1],
                                                                 sample_format="S16LE")))
        else:
            self._sink.write(np.ascontiguousarray(audio))

    def _open(self, channels: int):
        if self.params["sink"] == "speaker":
            from kb_ros.audio.devices import open_output_stream
            stream = open_output_stream(self.params["device"], channels)
            stream.start()
            return stream
        sink = wave.open(self.params["wav"], "wb")
        sink.setnchannels(channels)
        sink.setsampwidth(2)
        sink.setframerate(SAMPLE_RATE)
        return sink

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()
        self.log.info(f"played {self.chunks} chunks ({self.gap_chunks} missing chunks filled)")


def check_writable(path: Path) -> None:
    """Refuse at start a WAV path that could never be written (not at the first chunk)."""
    folder = path.parent
    if path.is_dir():
        raise ValueError(f"wav {path} is a directory")
    if not folder.is_dir():
        raise ValueError(f"wav {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"wav {path} is not writable")


def main(argv: list[str] | None = None) -> None:
    run_node(PlaybackNode, "playback_node", argv)


if __name__ == "__main__":
    main()
