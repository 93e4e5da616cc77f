from dataclasses import dataclass
from typing import ClassVar

from qasr.config_flags import CliArgs, option

FORM_OVERHEAD_BYTES = 64 << 10
TASKS = "file transcription task"  # the help section of the DashScope-style task options
ACCESS = "access"  # the help section of the API key options


@dataclass(slots=True)
class ServerOptions(CliArgs):
    """What `qasr serve` takes besides the engine's options; every field is a --dashed-flag."""

    cli_title: ClassVar[str] = "server"

    host: str = option("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = option(8000, "TCP port to listen on (0: any free one)")
    served_model_names: list[str] = option(
        default_factory=list, flag="served_model_name",
        help="model name(s) clients may send; default: the model folder's name or Hugging Face id (qasr-demo for "
             "the bundled demo model)")
    max_upload_mb: float = option(25.0, "largest audio upload (OpenAI's and vLLM's limit); bigger ones get 413")
    max_queued_requests: int = option(1024, "requests that may wait beyond the engine's --max-num-seqs; more get 429")
    max_prompt_chars: int = option(4096, "longest prompt (context) a transcription request may send, in characters; "
                                         "longer gets 400")
    max_prompt_tokens: int = option(512, "longest prompt (context) a transcription request may send, in tokens (each "
                                         "audio piece's prompt repeats it); longer gets 400")
    upload_timeout_s: float = option(60.0, "a transcription request's whole body must arrive within this, or 408")
    sse_keepalive_s: float = option(15.0, "a streamed response waiting for its first token sends an SSE comment "
                                          "this often")
    keepalive_timeout_s: float = option(75.0, "an idle connection is closed after this (longer than load balancers' "
                                              "idle timeouts, so they close first)")
    header_timeout_s: float = option(10.0, "a request's headers must arrive within this once its first byte has, or "
                                           "the connection is closed")
    drain_timeout_s: float = option(30.0, "on SIGTERM, /health turns 503 and requests in flight get this long to "
                                          "finish (a second SIGTERM ends them at once)")
    max_connections: int | None = option(None, "most open connections (at the cap a new one replaces the longest "
                                               "idle); none: what the open-file limit leaves, less room for bursts")
    max_audio_seconds: float = option(3 * 3600.0, "longest audio: a longer upload is a 400, a longer task file "
                                                  "(per channel) fails its task")
    max_audio_seconds_in_flight: float = option(6 * 3600.0, "most seconds of decoded audio the server holds at once "
                                                             "(uploads and task files); an upload past it gets 429, "
                                                             "tasks wait")
    api_keys: list[str] = option(
        default_factory=list, flag="api_key", repeatable=True, env="QASR_API_KEYS", secret=True, group=ACCESS,
        help="a key clients must send as 'Authorization: Bearer KEY' (repeatable); with no key set the server is "
             "open to whoever reaches it")
    api_key_file: str | None = option(None, "a file of API keys, one per line ('#' starts a comment), read again on "
                                            "SIGHUP", group=ACCESS)
    # a SQLite file (":memory:": this process only), or postgresql://... for replicas on several hosts
    task_db: str = option(".qasr/tasks.sqlite3", "task store: a SQLite file (replicas on one host may share it) or "
                                                 "a postgresql:// URL (replicas on several hosts); default "
                                                 ".qasr/tasks.sqlite3", group=TASKS, env="QASR_TASK_DB", secret=True)
    max_running_tasks: int = option(64, "tasks this server runs at once, all batched by the engine (0: accept "
                                        "tasks but leave them to other replicas)", group=TASKS)
    max_fetch_mb: float = option(512.0, "largest file_url download", group=TASKS)
    max_fetch_mb_in_flight: float = option(2048.0, "most megabytes of downloads held at once; more wait",
                                           group=TASKS)
    fetch_timeout_s: float = option(300.0, "time limit of one download, redirects included", group=TASKS)
    allow_private_urls: bool = option(False, "let file_url reach private, loopback, link-local and reserved "
                                             "addresses (off: SSRF guard)", group=TASKS)
    allow_url_hosts: list[str] = option(
        default_factory=list, flag="allow_url_host", repeatable=True, env="QASR_ALLOW_URL_HOSTS", group=TASKS,
        help="a host name or IP address file_url may reach although it is private (an object store inside the "
             "network; repeatable); every other private address stays refused")
    task_lease_s: float = option(30.0, "a RUNNING task whose server stops renewing it for this long runs again "
                                       "elsewhere", group=TASKS)
    task_ttl_hours: float = option(24.0, "finished tasks and their results are deleted after this, as DashScope "
                                         "does", group=TASKS)
    public_url: str | None = option(None, "base URL of result links; default: from the request's Host and "
                                          "X-Forwarded-* headers", group=TASKS)
    # without keys the listing shows every client's tasks (their file URLs, presigned credentials included)
    enable_task_listing: bool = option(False, "serve GET /api/v1/tasks without API keys, where it lists every "
                                              "client's tasks (off: 403); with keys it is on and lists the caller's",
                                       group=TASKS)

    def __post_init__(self) -> None:
        for name in ("max_upload_mb", "upload_timeout_s", "sse_keepalive_s", "max_fetch_mb", "fetch_timeout_s",
                     "max_audio_seconds", "task_lease_s", "task_ttl_hours", "keepalive_timeout_s", "header_timeout_s",
                     "max_audio_seconds_in_flight", "max_fetch_mb_in_flight", "drain_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_queued_requests", "max_running_tasks", "max_prompt_chars", "max_prompt_tokens", "port"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_audio_seconds > self.max_audio_seconds_in_flight:
            raise ValueError("max_audio_seconds must not exceed max_audio_seconds_in_flight: such audio could never "
                             "run")
        if self.max_fetch_mb > self.max_fetch_mb_in_flight:
            raise ValueError("max_fetch_mb must not exceed max_fetch_mb_in_flight: such a file could never download")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * (1 << 20))

    @property
    def max_fetch_bytes(self) -> int:
        return int(self.max_fetch_mb * (1 << 20))

    @property
    def max_fetch_bytes_in_flight(self) -> int:
        return int(self.max_fetch_mb_in_flight * (1 << 20))

    @property
    def max_body_bytes(self) -> int:
        """The upload plus room for the other form fields and the multipart framing."""
        return self.max_upload_bytes + FORM_OVERHEAD_BYTES
