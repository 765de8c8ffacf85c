"""
small_node: the device side. Enhances each 8 ms chunk at once, boosted by whatever hint it has.

audio -> [PcmChunkStream] -> [HintMatcher] -> [ChunkEngine] -> enhanced (stamp of its input)
hints -> HintMatcher (validated, kept until used, late or superseded)
"""

from __future__ import annotations

import math

from kb_ros.audio.clock import CHUNK_MS, Chunk
from kb_ros.audio.pcm import AudioFormat, PcmError, encode_pcm
from kb_ros.boosting.catch_up import CatchUp
from kb_ros.boosting.engine import ChunkEngine
from kb_ros.boosting.hint_format import DEFAULT_HINT_FORMAT, HintStreamInfo, hint_audio_format
from kb_ros.boosting.hint_matcher import DEFAULT_HINT_ENERGY_MARGIN_DB, HintMatcher
from kb_ros.boosting.limiter import DEFAULT_OUTPUT_MARGIN_DB
from kb_ros.boosting.stats import LatencyStats
from kb_ros.models.filterbank import OUTPUT_DELAY_SAMPLES
from kb_ros.models.shipped import load_model_and_manifest
from kb_ros.nodes.common import (ERROR, INPUT_FORMAT_PARAMS, OK, RUNTIME_PARAM,
                                 STAMP_TOLERANCE_PARAM, WARN, DropLog, InfoAnnouncer, RateMeter,
                                 adopt_format, audio_input, compute_budget_params,
                                 declare_all, declared_input_format, log_runtime)
from kb_ros.nodes.runner import run_node
from kb_ros.transport import qos
from kb_ros.transport.backend import Backend, DiagnosticReport, ParamSpec, subscribe_info
from kb_ros.transport.messages import AUDIO_STAMPED, AudioChunkMsg, AudioInfoMsg


PARAMS = [
    ParamSpec("model", "kb", "Shipped model name or checkpoint path of the boosted small model",
              read_only=True),
    ParamSpec("use_hints", True, "Fuse hints; false runs the model's no-hint path only"),
    ParamSpec("output_format", "F32LE", "PCM format of `enhanced`", read_only=True,
              choices=("F32LE", "S16LE")),
    ParamSpec("hint_history_chunks", 64, "Chunk stamps remembered for matching hints",
              read_only=True, int_range=(16, 4096)),
    ParamSpec("accept_any_hint_model", False,
              "Accept hints from any producer model (testing only: hints from a model the "
              "small model was not trained with degrade it)", read_only=True),
    ParamSpec("threads", 1, "Intra-op threads (1 is fastest for small models)",
              read_only=True, int_range=(1, 64)),
    RUNTIME_PARAM,
    STAMP_TOLERANCE_PARAM,
    *INPUT_FORMAT_PARAMS,
    ParamSpec("output_margin_db", DEFAULT_OUTPUT_MARGIN_DB,
              "Output limiter: each output chunk stays within this many dB of the input it "
              "estimates (and within full scale); gain changes are ramped", read_only=True,
              float_range=(0.0, 40.0)),
    ParamSpec("hint_energy_margin_db", DEFAULT_HINT_ENERGY_MARGIN_DB,
              "A hint louder than the input it estimates by more than this many dB is invalid",
              read_only=True, float_range=(0.0, 60.0)),
    *compute_budget_params(warn_ratio=0.5),
    ParamSpec("warn_hit_rate", 0.5, "WARN when the hint hit rate falls below this",
              float_range=(0.0, 1.0)),
    ParamSpec("max_lag_ms", 100.0, "A chunk processed this far behind the stream's best-case "
              "latency skips the model (its input passes, delayed and scaled as the model's "
              "output would be) until the node has caught up; 0: never", read_only=True,
              float_range=(0.0, 10000.0)),
    ParamSpec("deadline_ms", 16.0, "A chunk published this far behind the stream's best-case "
              "latency counts as a deadline miss", read_only=True, float_range=(0.0, 10000.0)),
]


def early_hint_chunks(max_lag_ms: float) -> int:
    """
    How far ahead of its chunk a hint may arrive and wait (HintMatcher's ``max_early_chunks``).

    A node allowed to run ``max_lag_ms`` behind its input (before it catches up) receives
    hints that much before it takes their chunks: they must wait, not be dropped as unknown.
    """
    return max(4, math.ceil(max_lag_ms / CHUNK_MS))


class SmallNode:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.log = backend.get_logger()
        self.params = declare_all(backend, PARAMS)
        model, manifest = load_model_and_manifest(self.params["model"])
        self.engine = ChunkEngine(model, threads=self.params["threads"],
                                  runtime=self.params["runtime"],
                                  output_margin_db=self.params["output_margin_db"])
        log_runtime(self.log, self.engine.runtime, self.engine.runtime_note)
        self.sources = self.engine.sources
        producers = None if self.params["accept_any_hint_model"] else frozenset(
            manifest["recipe"].get("hint_producers", []))
        self.matcher = HintMatcher(max(model.config.min_age, 1) if self.engine.uses_hints else 1,
                                   max(model.config.max_age, 1) if self.engine.uses_hints else 1,
                                   sources=self.sources, accepted_producers=producers,
                                   history_chunks=self.params["hint_history_chunks"],
                                   energy_margin_db=self.params["hint_energy_margin_db"],
                                   max_early_chunks=early_hint_chunks(self.params["max_lag_ms"]))
        self.drop_log = DropLog(self.log)
        self.input = audio_input(self.log, self.drop_log, self.params["stamp_tolerance_ms"],
                                 declared_input_format(self.params))
        self.frame_id = ""
        self.hint_format = hint_audio_format(DEFAULT_HINT_FORMAT, self.sources)  # until hint_info
        self.hint_producer: str | None = None
        self.hint_state = "waiting"
        self.hint_info_rejected = 0
        self.deadline_misses = 0
        self.latency_ms = LatencyStats()
        self.catch_up = CatchUp(self.params["max_lag_ms"], self.params["deadline_ms"],
                                OUTPUT_DELAY_SAMPLES, self.sources, self.engine.reset)
        self.out_format = AudioFormat(channels=self.sources,
                                      sample_format=self.params["output_format"])

        self.enhanced_pub = backend.create_publisher(AUDIO_STAMPED, "enhanced", qos.AUDIO_PUB)
        InfoAnnouncer(backend, "enhanced_info", AudioInfoMsg.from_format(self.out_format))
        subscribe_info(backend, "audio_info", self.on_audio_info)
        subscribe_info(backend, "hint_info", self.on_hint_info)
        backend.create_subscription(AUDIO_STAMPED, "hints", self.on_hint, qos.HINT_SUB,
                                    on_deadline_missed=self.on_hints_stalled,
                                    on_liveliness_changed=self.on_hint_providers,
                                    on_incompatible_qos=self.on_hint_qos_incompatible)
        backend.create_subscription(AUDIO_STAMPED, "audio", self.on_audio, qos.AUDIO_SUB)
        self.chunk_rate = RateMeter(backend.now_ns)
        backend.add_diagnostic_task("boosting", self.diagnose)
        self.log.info(f"ready: model {manifest.get('model_id', '?')}, hint ages "
                      f"{self.matcher.min_age}..{self.matcher.max_age} chunks")

    def on_audio_info(self, msg: AudioInfoMsg) -> None:
        self.process(adopt_format(self.input, msg, "audio_info"))

    def on_hint_info(self, msg: AudioInfoMsg) -> None:
        info = HintStreamInfo.parse(msg.coding_format)
        try:
            if info is None:
                raise PcmError(f"coding_format {msg.coding_format!r} is not a kb_ros hint")
            fmt = self.matcher.check_format(msg.to_format())
        except PcmError as err:
            self.hint_info_rejected += 1
            self.drop_log("bad_hint_info", str(err))
            return
        if (fmt, info.model_id) == (self.hint_format, self.hint_producer):
            return  # the producer's periodic repeat
        self.hint_format, self.hint_producer = fmt, info.model_id
        accepted = self.matcher.accepted_producers
        if accepted is not None and info.model_id not in accepted:
            self.log.warning(f"hints from model {info.model_id} will be rejected: this model was "
                             f"trained with hints from {sorted(accepted)} "
                             "(accept_any_hint_model overrides)")
        else:
            self.log.info(f"hints from model {info.model_id} ({fmt.coding} {fmt.sample_format})")

    def on_hint(self, msg: AudioChunkMsg) -> None:
        """Offer a hint; only a valid one (used, pending, late or repeated) means hints flow."""
        outcome = None
        if self.params["use_hints"]:
            outcome = self.matcher.offer_pcm(msg.stamp_ns, msg.data, self.hint_format,
                                             self.hint_producer)
        if outcome in (None, "late", "duplicate"):
            self.hint_state = "ok"

    def on_hints_stalled(self) -> None:
        self.hint_state = "stalled"
        self.deadline_misses += 1

    def on_hint_providers(self, alive: int) -> None:
        if alive == 0:
            self.hint_state = "gone"

    def on_hint_qos_incompatible(self, policy: str) -> None:
        self.hint_state = "incompatible"
        self.log.warning(f"a hints publisher offers incompatible QoS ({policy}): not matched")

    def on_audio(self, msg: AudioChunkMsg) -> None:
        chunks = self.input.push(msg.stamp_ns, msg.data)
        if chunks:  # a dropped message changes nothing, not even the frame_id
            self.frame_id = msg.frame_id
        self.process(chunks)

    def finish(self) -> None:
        """At shutdown: enhance and publish the audio still held for its format."""
        self.process(self.input.finish())

    def process(self, chunks: list[Chunk]) -> None:
        """Enhance and publish each chunk at once, with the freshest usable hint."""
        for chunk in chunks:
            hint = self.matcher.on_chunk(chunk.stamp_ns, chunk.audio)
            out = self.catch_up.bypass(chunk.audio,
                                       (self.backend.now_ns() - chunk.stamp_ns) / 1e6)
            if out is None:
                out = self.engine.process(chunk.audio, hint)
            self.enhanced_pub.publish(AudioChunkMsg(chunk.stamp_ns,
                                                    encode_pcm(out, self.out_format),
                                                    self.frame_id))
            latency_ms = (self.backend.now_ns() - chunk.stamp_ns) / 1e6
            self.latency_ms.add(latency_ms)
            self.catch_up.published(out, latency_ms)

    def report(self) -> dict:
        """Everything the node counts, as one JSON-able dict (diagnostics and the CLI)."""
        return {"hints": self.matcher.counters.as_dict(),
                "input_drops": dict(self.input.drops),
                "compute_ms": self.engine.counters.compute_ms.summary(),
                "stamp_to_publish_ms": self.latency_ms.summary(),
                "non_finite_outputs": self.engine.counters.non_finite_outputs,
                "limiter": vars(self.engine.limiter.counters),
                "input_stamps": vars(self.input.guard.stats),
                "hint_info_rejected": self.hint_info_rejected,
                "catch_up": vars(self.catch_up.counters),
                "hint_state": self.hint_state}

    def diagnose(self) -> DiagnosticReport:
        """Compute p99 against the chunk budget first, then hint health; thresholds are params."""
        report = self.report()
        compute = report["compute_ms"]
        hits = self.matcher.counters
        ratio = compute["p99"] / CHUNK_MS
        level, message = OK, "boosted"
        if ratio > self.params["error_compute_ratio"]:
            level, message = ERROR, f"compute p99 {compute['p99']:.2f} ms: not real time"
        elif ratio > self.params["warn_compute_ratio"]:
            level, message = WARN, "compute close to the chunk budget"
        elif self.hint_state != "ok" or hits.hit_rate < self.params["warn_hit_rate"]:
            level, message = WARN, f"hints {self.hint_state}, hit rate {hits.hit_rate:.2f}"
        ages = hits.age_histogram
        values = {"chunks": hits.chunks, "chunk_rate_hz": self.chunk_rate.rate(hits.chunks),
                  "hit_rate": f"{hits.hit_rate:.3f}", "hits": hits.hits,
                  "misses": hits.misses, "late": hits.late,
                  "invalid": sum(hits.invalid.values()), "duplicates": hits.duplicates,
                  "hint_state": self.hint_state, "deadline_misses": self.deadline_misses,
                  "age_histogram": report["hints"]["age_histogram"],
                  "hint_age_mean_chunks": round(
                      sum(age * n for age, n in ages.items()) / max(1, sum(ages.values())), 2),
                  "compute_p50_ms": compute["p50"], "compute_p99_ms": compute["p99"],
                  "compute_p99_ratio": round(ratio, 4),
                  "latency_p50_ms": report["stamp_to_publish_ms"]["p50"],
                  "latency_p99_ms": report["stamp_to_publish_ms"]["p99"],
                  "input_drops": sum(self.input.drops.values()),
                  "non_finite_outputs": report["non_finite_outputs"],
                  "limited_chunks": report["limiter"]["limited_chunks"],
                  "limiter_min_gain_db": round(report["limiter"]["min_gain_db"], 2),
                  "input_gaps": report["input_stamps"]["gaps"],
                  "input_reanchors": report["input_stamps"]["reanchors"],
                  "hint_info_rejected": self.hint_info_rejected,
                  "output_deadline_misses": self.catch_up.counters.deadline_misses,
                  "bypassed_chunks": self.catch_up.counters.bypassed,
                  "catch_ups": self.catch_up.counters.catch_ups,
                  "max_lag_ms": self.catch_up.counters.max_lag_ms}
        values.update({f"invalid.{reason}": n for reason, n in sorted(hits.invalid.items())})
        values.update({f"input_drops.{reason}": n
                       for reason, n in sorted(self.input.drops.items())})
        return DiagnosticReport(level, message, values)


def main(argv: list[str] | None = None) -> None:
    run_node(SmallNode, "small_node", argv)


if __name__ == "__main__":
    main()
