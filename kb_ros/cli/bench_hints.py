"""
Hint and audio bandwidth per format, and what each hint format does to the boosted output.

Bandwidth is measured on the messages themselves: PCM payload, the CDR-serialized
``AudioDataStamped`` the DDS writer sends, and that plus RTPS/UDP/IPv4 framing, at 125
messages a second. Quality: the boosted model runs the real chunk pipeline (``run_pipeline``:
HintMatcher, ChunkEngine) with the large model's real output as hints ``HINT_AGE`` chunks late,
each hint coded and decoded in the format under test (the codecs the nodes use), on the shipped
sample and on validation examples of a corpus when one is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from kb_ros.audio.clock import CHUNK_FRAMES, CHUNK_MS
from kb_ros.audio.metrics import si_snr
from kb_ros.audio.pcm import AudioFormat, decode_pcm, encode_pcm
from kb_ros.boosting.engine import ChunkEngine
from kb_ros.boosting.hint_format import DEFAULT_HINT_FORMAT, HINT_FORMATS, hint_audio_format
from kb_ros.boosting.offline import run_pipeline
from kb_ros.cli.bench_compute import HINT_AGE, DemoAudio
from kb_ros.cli.evaluate import OfflineOutput, full_sequence_outputs, si_snri
from kb_ros.models.filterbank import N_FREQS
from kb_ros.models.shipped import load_model_and_manifest
from kb_ros.transport.dds_types import AudioDataStamped, chunk_to_wire
from kb_ros.transport.emulated_link import LinkProfile
from kb_ros.transport.messages import AudioChunkMsg

CHUNKS_PER_S = 1000 / CHUNK_MS
# Per message on the wire besides the CDR payload: RTPS header 20 B, INFO_TS 12 B, DATA
# submessage header 24 B, UDP 8 B, IPv4 20 B (one sample per datagram, no inline QoS).
RTPS_UDP_IPV4_BYTES = 20 + 12 + 24 + 8 + 20
# The paper's hint: the large model's complex STFT frame, float32, per source and chunk.
PAPER_SPECTRUM_HINT_BYTES = 2 * N_FREQS * 4


def kbit_per_s(bytes_per_chunk: float) -> float:
    return round(bytes_per_chunk * 8 * CHUNKS_PER_S / 1000, 2)


def message_bytes(payload: bytes, frame_id: str = "") -> int:
    """Size of the serialized ``AudioDataStamped`` carrying ``payload`` (what DDS sends)."""
    wire = chunk_to_wire(AudioChunkMsg(1_700_000_000_000_000_000, payload, frame_id))
    return len(AudioDataStamped.serialize(wire))


def bandwidth_table(sources: int = 1) -> list[dict[str, Any]]:
    """kbit/s of ``audio`` and ``enhanced`` (F32LE, S16LE) and of hints in every hint format."""
    chunk = np.zeros((CHUNK_FRAMES, sources), np.float32)
    rows = []
    streams = [("audio", name, AudioFormat(channels=sources, sample_format=name), "mic")
               for name in ("F32LE", "S16LE")]
    streams += [("hints", name, hint_audio_format(name, sources), "") for name in HINT_FORMATS]
    for stream, name, fmt, frame_id in streams:
        payload = encode_pcm(chunk, fmt)
        cdr = message_bytes(payload, frame_id)
        rows.append({"stream": stream, "format": name, "coding_format": fmt.coding,
                     "sample_format": fmt.sample_format, "payload_bytes": len(payload),
                     "payload_kbit_s": kbit_per_s(len(payload)), "cdr_bytes": cdr,
                     "cdr_kbit_s": kbit_per_s(cdr),
                     "wire_kbit_s": kbit_per_s(cdr + (-cdr % 4) + RTPS_UDP_IPV4_BYTES)})
    rows.append({"stream": "hints", "format": "paper's STFT frame, float32",
                 "coding_format": None, "sample_format": None,
                 "payload_bytes": PAPER_SPECTRUM_HINT_BYTES * sources,
                 "payload_kbit_s": kbit_per_s(PAPER_SPECTRUM_HINT_BYTES * sources),
                 "cdr_bytes": None, "cdr_kbit_s": None, "wire_kbit_s": None})
    return rows


def coded(audio: np.ndarray, name: str) -> np.ndarray:
    """Hint audio ``[frames, sources]`` after the hint node's encoder and the device's decoder."""
    fmt = hint_audio_format(name, audio.shape[1])
    return decode_pcm(encode_pcm(audio, fmt), fmt)


def snr_db(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Plain SNR of a coded signal against the uncoded one: the codec's own noise."""
    noise = float(np.sum((estimate - reference) ** 2))
    return round(10 * np.log10(float(np.sum(reference ** 2)) / max(noise, 1e-20)), 2)


class QualityRun:
    """The boosted model's engine and its producer, reused across formats and examples."""

    def __init__(self) -> None:
        kb, _ = load_model_and_manifest("kb")
        self.engine = ChunkEngine(kb, threads=1)
        self.large, manifest = load_model_and_manifest("large")
        self.large_id = manifest["model_id"]

    def boosted(self, mix: np.ndarray, hints: np.ndarray | None) -> tuple[np.ndarray, float]:
        """Boosted output ``[frames]`` with ``hints`` (None: the no-hint path) and hit rate."""
        self.engine.reset()
        if self.engine.limiter is not None:
            self.engine.limiter.reset()
        result = run_pipeline(mix[:, None], self.engine,
                              OfflineOutput(hints) if hints is not None else None,
                              link=LinkProfile(delay_ms=HINT_AGE * CHUNK_MS),
                              hint_producer=self.large_id)
        hit_rate = result.counters.hit_rate if result.counters is not None else 0.0
        return result.enhanced[:, 0], hit_rate

    def example(self, mix: np.ndarray, clean: np.ndarray,
                large_out: np.ndarray | None = None) -> dict[str, Any]:
        """Scores of one example: large alone, no hint, and boosted with each hint format."""
        if large_out is None:
            large_out = np.clip(full_sequence_outputs(self.large, mix[None])[0], -1.0, 1.0)
        no_hint, _ = self.boosted(mix, None)
        scores: dict[str, Any] = {"large": si_snri(large_out[:, 0], clean, mix),
                                  "no_hint": si_snri(no_hint, clean, mix), "formats": {}}
        for name in HINT_FORMATS:
            hints = coded(large_out, name)
            boosted, hit_rate = self.boosted(mix, hints)
            scores["formats"][name] = {
                "boosted_si_snri_db": si_snri(boosted, clean, mix),
                "hint_si_snri_db": si_snri(hints[:, 0], clean, mix),
                "hint_snr_vs_float_db": snr_db(hints, large_out),
                "boosted_vs_float_hint_si_snr_db": None, "hit_rate": round(hit_rate, 4),
                "_boosted": boosted}
        reference = scores["formats"]["F32LE"]["_boosted"]
        for entry in scores["formats"].values():
            entry["boosted_vs_float_hint_si_snr_db"] = round(
                float(si_snr(entry.pop("_boosted"), reference)), 2)
        return scores


def _mean_scores(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Average the per-example scores, key by key."""
    mean = {key: round(float(np.mean([e[key] for e in examples])), 4)
            for key in ("large", "no_hint")}
    mean["formats"] = {
        name: {key: round(float(np.mean([e["formats"][name][key] for e in examples])), 4)
               for key in examples[0]["formats"][name]}
        for name in examples[0]["formats"]}
    return mean


def pick_default(bandwidth: list[dict[str, Any]], quality: dict[str, Any],
                 tolerance_db: float = 0.05) -> dict[str, Any]:
    """
    Pick the hint format to ship: the cheapest within ``tolerance_db`` of float32 hints.

    Both the boosted output's SI-SNRi and the hint's own (what a model that leans on its hints
    would get) count, on the shipped sample and on every validation set measured.
    """
    wire = {row["format"]: row["wire_kbit_s"] for row in bandwidth
            if row["stream"] == "hints" and row["format"] in HINT_FORMATS}
    sets = [quality["sample"]] + ([quality["validation"]] if quality.get("validation") else [])
    acceptable = [name for name in HINT_FORMATS
                  if all(s["formats"]["F32LE"][key] - s["formats"][name][key] <= tolerance_db
                         for s in sets for key in ("boosted_si_snri_db", "hint_si_snri_db"))]
    chosen = min(acceptable, key=lambda name: wire[name])
    return {"format": chosen, "tolerance_db": tolerance_db, "acceptable": acceptable,
            "shipped_default": DEFAULT_HINT_FORMAT}


def hints_section(demo: DemoAudio, data_dir: Path | None, val_examples: int,
                  notify: Callable[[str], None]) -> dict[str, Any]:
    """Bandwidth of every stream, quality per hint format, and the format the data picks."""
    bandwidth = bandwidth_table()
    run = QualityRun()
    notify("hint formats on the shipped sample")
    quality: dict[str, Any] = {"hint_age_chunks": HINT_AGE,
                               "sample": run.example(demo.mix[:, 0], demo.clean,
                                                     demo.large_out)}
    if data_dir is not None and val_examples > 0:
        with np.load(Path(data_dir) / "val.npz") as data:
            mixes, cleans = data["mix"][:val_examples], data["clean"][:val_examples]
        notify(f"hint formats on {len(mixes)} validation examples")
        examples = [run.example(mix, clean) for mix, clean in zip(mixes, cleans)]
        quality["validation"] = {**_mean_scores(examples), "examples": len(examples),
                                 "data": str(data_dir)}
    return {"bandwidth": bandwidth, "quality": quality,
            "default": pick_default(bandwidth, quality)}
