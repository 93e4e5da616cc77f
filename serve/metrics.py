"""Prometheus metrics, prefix `qasr_`, in a registry each app owns (several apps can live in one process)."""

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from qasr.engine import AsyncEngine, Transcription
from qasr.serve import task_store
from qasr.serve.budget import AudioBudget
from qasr.serve.drain import Drain
from qasr.serve.task_store import SqlTaskStore, Task

logger = logging.getLogger("qasr.metrics")

# Bucket bounds fit what each histogram measures (a quantile cannot be finer than the buckets around it):
# end-to-end latency from 50 ms to 4 h (a 3-hour upload takes a while), time to first token and queue time from 1 ms
# (an idle queue is a millisecond, not the 0.3 s of a coarser first bucket), task latency from 0.5 s to a day (tasks
# wait in the store), audio durations from 0.5 s to 3 h (the longest audio the server takes by default).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0,
                   120.0, 180.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0)
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0,
                40.0, 80.0, 160.0, 320.0, 640.0)
QUEUE_BUCKETS = TTFT_BUCKETS
TASK_LATENCY_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
                        7200.0, 14400.0, 28800.0, 86400.0)
RTF_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
AUDIO_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
                 10800.0)
# word timing: a step's batched aligner pass (milliseconds on a GPU) to a long file's queue behind other work
ALIGNMENT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

STATUSES = ("success", "client_error", "server_error", "aborted")


class Metrics:
    def __init__(self, engine: AsyncEngine, tasks: SqlTaskStore | None = None, audio_budget: AudioBudget | None = None,
                 drain: Drain | None = None):
        self.registry = CollectorRegistry()
        r = self.registry
        self.e2e_latency = Histogram("qasr_e2e_request_latency_seconds",
                                     "Transcription requests, from the server receiving the request to the last byte "
                                     "of the answer (upload and audio decoding included)", buckets=LATENCY_BUCKETS,
                                     registry=r)
        self.ttft = Histogram("qasr_time_to_first_token_seconds", "Engine arrival to the first generated token",
                              buckets=TTFT_BUCKETS, registry=r)
        self.queue_time = Histogram("qasr_request_queue_time_seconds", "Engine arrival to first scheduled",
                                    buckets=QUEUE_BUCKETS, registry=r)
        self.rtf = Histogram("qasr_request_real_time_factor",
                             "Engine processing time (arrival to finished) divided by the audio's duration",
                             buckets=RTF_BUCKETS, registry=r)
        self.audio_duration = Histogram("qasr_request_audio_duration_seconds", "Audio duration per request",
                                        buckets=AUDIO_BUCKETS, registry=r)
        self.audio_seconds = Counter("qasr_audio_input_seconds", "Seconds of audio transcribed", registry=r)
        self.prompt_tokens = Counter("qasr_prompt_tokens", "Prompt tokens (audio placeholders included) of finished "
                                     "requests", registry=r)
        self.generation_tokens = Counter("qasr_generation_tokens", "Tokens generated for finished requests",
                                         registry=r)
        self.preemptions = Counter("qasr_num_preemptions", "Preemptions of finished requests' sequences", registry=r)
        self.aligned_seconds = Counter("qasr_aligned_audio_seconds", "Seconds of audio whose words the forced aligner "
                                       "timed", registry=r)
        self.alignment_latency = Histogram("qasr_alignment_latency_seconds", "Word timing per request: its transcript "
                                           "finished to its words timed (queue and aligner pass)",
                                           buckets=ALIGNMENT_BUCKETS, registry=r)
        self.requests = Counter("qasr_requests", "Transcription requests by outcome", ["status"], registry=r)
        for status in STATUSES:
            self.requests.labels(status)
        self.auth_failures = Counter("qasr_auth_failures", "Requests refused for a missing or wrong API key",
                                     ["reason"], registry=r)
        for reason in ("missing", "invalid"):
            self.auth_failures.labels(reason)
        # read from the engine thread's scheduler when scraped: plain len() and a ratio, safe to read racily
        llm, scheduler = engine.engine, engine.engine.core.scheduler
        Gauge("qasr_num_requests_running", "Requests being decoded (all their audio pieces)",
              registry=r).set_function(lambda: llm.num_running_requests)
        Gauge("qasr_num_requests_waiting", "Requests not yet scheduled",
              registry=r).set_function(lambda: llm.num_waiting_requests)
        Gauge("qasr_num_sequences_running", "Sequences (audio pieces) in the running batch",
              registry=r).set_function(lambda: scheduler.num_running)
        Gauge("qasr_num_sequences_waiting", "Sequences (audio pieces) waiting to be scheduled",
              registry=r).set_function(lambda: scheduler.num_waiting)
        Gauge("qasr_engine_up", "1 while the engine runs; 0 once it has stopped (failed, or shut down by a drain)",
              registry=r).set_function(lambda: float(engine.is_running))
        if drain is not None:
            Gauge("qasr_draining", "1 from SIGTERM until the server exits (health is 503, new requests are turned "
                  "away), else 0", registry=r).set_function(lambda: float(drain.draining))
        if audio_budget is not None:
            Gauge("qasr_audio_seconds_in_flight", "Seconds of decoded audio the server holds (uploads and task files), "
                  "against --max-audio-seconds-in-flight", registry=r).set_function(lambda: audio_budget.used_s)
        Gauge("qasr_kv_cache_usage_perc", "Fraction of KV cache blocks in use (0-1)",
              registry=r).set_function(lambda: scheduler.kv_usage)
        # DashScope-style tasks. The counter cannot be called qasr_async_tasks_total: its family name would be
        # qasr_async_tasks, the gauge's.
        self.tasks_finished = Counter("qasr_async_tasks_finished", "File-transcription tasks this server finished, "
                                      "by final status", ["status"], registry=r)
        for status in task_store.FINAL_STATUSES:
            self.tasks_finished.labels(status.lower())
        self.lease_expiries = Counter("qasr_async_task_lease_expiries", "Tasks whose lease ran out (the replica "
                                      "running them stopped renewing): requeued, or failed after too many tries",
                                      registry=r)
        self.task_latency = Histogram("qasr_async_task_latency_seconds", "File-transcription tasks, submitted to "
                                      "finished (SUCCEEDED or FAILED)", buckets=TASK_LATENCY_BUCKETS, registry=r)
        if tasks is not None:
            r.register(TaskCounts(tasks))
            Gauge("qasr_task_store_up", "1 while the task store answers (as of its last statement), 0 while it cannot "
                  "be reached", registry=r).set_function(lambda: float(tasks.up))

    def observe_success(self, result: Transcription, latency: float) -> None:
        """An answered OpenAI request."""
        self.requests.labels("success").inc()
        self.e2e_latency.observe(latency)
        self.observe_transcription(result)

    def observe_transcription(self, result: Transcription) -> None:
        """What the engine did for one finished transcription: an OpenAI request's, or one channel of a task's."""
        self.audio_duration.observe(result.duration)
        self.audio_seconds.inc(result.duration)
        m = result.metrics
        if m is None:
            return
        if m.first_token_time is not None:
            self.ttft.observe(m.first_token_time - m.arrival_time)
        if m.first_scheduled_time is not None:
            self.queue_time.observe(m.first_scheduled_time - m.arrival_time)
        if m.finished_time is not None and result.duration > 0:
            self.rtf.observe((m.finished_time - m.arrival_time) / result.duration)
        self.prompt_tokens.inc(m.num_prompt_tokens)
        self.generation_tokens.inc(m.num_output_tokens)
        self.preemptions.inc(m.num_preemptions)
        if m.alignment_time is not None:
            self.aligned_seconds.inc(m.aligned_seconds)
            self.alignment_latency.observe(m.alignment_time)

    def observe_failure(self, status: str) -> None:
        self.requests.labels(status).inc()

    def observe_task(self, task: Task) -> None:
        self.tasks_finished.labels(task.status.lower()).inc()
        if task.end_time is not None and task.status != "CANCELED":
            self.task_latency.observe(task.end_time - task.submit_time)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class TaskCounts(Collector):
    """`qasr_async_tasks{status}`: the store's tasks by status when scraped (all replicas sharing it; finished
    tasks count until they expire)."""

    def __init__(self, tasks: SqlTaskStore):
        self.tasks = tasks

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("qasr_async_tasks", "File-transcription tasks in the task store by status",
                                   labels=["status"])
        try:
            counts = self.tasks.counts()
        except Exception:  # the database is unreachable: the rest of the scrape still matters, more than ever
            logger.warning("could not count the tasks for /metrics", exc_info=True)
            return
        for status in task_store.STATUSES:
            family.add_metric([status.lower()], counts[status])
        yield family
