"""DashScope's asynchronous file transcription (Qwen3-ASR-Flash-Filetrans, Paraformer), as the `dashscope` SDK
calls it: submit a task, poll it, fetch the result document it points at, cancel it while PENDING."""

import math
import time
import uuid
from dataclasses import replace

from aiohttp import web

from qasr.engine.languages import UnknownLanguageError, resolve_language
from qasr.engine.request import InvalidRequest
from qasr.engine.words import check_alignable
from qasr.serve.auth import API_KEY, caller_id, check_result_link, result_link_query
from qasr.serve.errors import APIError, parse_count
from qasr.serve.fetch import FetchError, check_url
from qasr.serve.state import STATE, ServerState
from qasr.serve.task_store import STATUSES, SUCCEEDED, Task, TaskRequest

MAX_FILE_URLS = 100  # Paraformer's limit
MAX_PAGE_SIZE = 100
MAX_PAGE_NO = 1_000_000  # SQLite's OFFSET is a 64-bit integer
MAX_IDEMPOTENCY_KEY_CHARS = 255
IDEMPOTENCY_NAMESPACE = uuid.UUID("5f0e8a52-93c1-4c3f-9a57-0d6f8f8d3b11")  # task ids of Idempotency-Keys


def invalid(message: str, code: str = "InvalidParameter") -> APIError:
    return APIError(400, message, code=code)


async def submit_task(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if request.headers.get("X-DashScope-Async", "").strip().lower() != "enable":
        raise invalid("This API runs asynchronously only: send the header 'X-DashScope-Async: enable'.")
    try:
        body = await request.json()
    except (ValueError, RecursionError) as error:  # RecursionError: nested deeper than the parser goes
        raise invalid(f"The request body is not valid JSON: {error}.") from error
    caller = await _caller(request, state)
    task_request = replace(parse_task_request(body, state.model_names, state.engine.has_aligner), key_hash=caller)
    task = Task(task_id=_task_id(request, caller), request=task_request)
    stored = await state.tasks.run(state.tasks.add_once, task)  # in the database before the client hears of it
    if stored.request != task.request:
        raise APIError(409, "This Idempotency-Key was used for a different request; a retry must send the same "
                       "body (or a new key for a new task).", code="IdempotencyKeyReused")
    state.worker.wake_up()
    return web.json_response({"request_id": _request_id(),
                              "output": {"task_id": stored.task_id, "task_status": stored.status}})


def _task_id(request: web.Request, caller: str | None) -> str:
    """A new id, or the one an Idempotency-Key stands for: a submit retried with the key (its answer lost to a
    crash or a network error) finds the task the first attempt stored, instead of creating a second one. Each API
    key has its own Idempotency-Keys: another's same key names another task."""
    key = request.headers.get("Idempotency-Key", "").strip()
    if not key:
        return str(uuid.uuid4())
    if len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise invalid(f"Idempotency-Key is {len(key)} characters long; at most {MAX_IDEMPOTENCY_KEY_CHARS}.")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:  # aiohttp keeps a header's bytes that are not UTF-8 as lone surrogates
        raise invalid("Idempotency-Key must be UTF-8 text.") from None
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, key if caller is None else f"{caller}\0{key}"))


async def _secret(state: ServerState) -> bytes:
    """The secret every replica shares, from the task store (made there by the first replica that asks)."""
    if state.secret is None:
        state.secret = await state.tasks.run(state.tasks.secret, "qasr")
    return state.secret


async def _caller(request: web.Request, state: ServerState) -> str | None:
    """Whose tasks this request may see: the keyed hash of its API key; None on a server without keys, where
    every task is everyone's."""
    key = request.get(API_KEY)
    return None if key is None else caller_id(await _secret(state), key)


def parse_task_request(body: object, model_names: list[str], has_aligner: bool = False) -> TaskRequest:
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    model = body.get("model")
    if not model:
        raise invalid('Required parameter "model" missing from request.', code="BadRequest.EmptyModel")
    if model not in model_names:
        raise APIError(404, f"Model not found: {model!r}. Served: {', '.join(model_names)}.", code="ModelNotFound")

    input_ = body.get("input")
    if not isinstance(input_, dict) or not (input_.get("file_url") or input_.get("file_urls")):
        raise invalid('Required input "input.file_url" (or "input.file_urls") missing from request.',
                      code="BadRequest.EmptyInput")
    if "file_url" in input_ and "file_urls" in input_:
        raise invalid('Send either "input.file_url" or "input.file_urls", not both.')
    multi_file = "file_urls" in input_
    urls = input_["file_urls"] if multi_file else [input_["file_url"]]
    if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
        raise invalid('"input.file_urls" must be a list of URLs.' if multi_file else
                      '"input.file_url" must be a URL string.')
    if len(urls) > MAX_FILE_URLS:
        raise invalid(f'"input.file_urls" holds {len(urls)} URLs; at most {MAX_FILE_URLS} are allowed.')
    for url in urls:
        try:
            check_url(url)
        except FetchError as error:
            raise invalid(error.message, code=error.code) from error

    parameters = body.get("parameters")
    parameters = {} if parameters is None else parameters
    if not isinstance(parameters, dict):
        raise invalid('"parameters" must be a JSON object.')
    channels = parameters.get("channel_id", [0])
    if (not isinstance(channels, list) or not channels
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in channels)
            or len(set(channels)) != len(channels)):
        raise invalid(f'"parameters.channel_id" must be a list of distinct channel numbers (from 0), '
                      f'got {channels!r}.')
    for flag in ("enable_itn", "enable_words"):  # enable_itn is accepted: the model has no separate ITN
        if not isinstance(parameters.get(flag, False), bool):
            raise invalid(f'"parameters.{flag}" must be true or false.')
    language = _language(parameters)
    enable_words = parameters.get("enable_words", False)
    if enable_words:
        if not has_aligner:
            raise invalid('"parameters.enable_words" needs a forced aligner, and this server has none (start it '
                          "with --aligner-model).")
        try:
            check_alignable(language)
        except InvalidRequest as error:
            raise invalid(str(error)) from error
    return TaskRequest(model=model, file_urls=urls, multi_file=multi_file, channels=channels, language=language,
                       enable_words=enable_words)


def _language(parameters: dict) -> str | None:
    """Qwen's `language`, or Paraformer's `language_hints` when it names exactly one (more: detect)."""
    language = parameters.get("language")
    hints = parameters.get("language_hints")
    if language is None and isinstance(hints, list) and len(hints) == 1:
        language = hints[0]
    if language is not None and not isinstance(language, str):
        raise invalid('"parameters.language" must be a language code such as "en" or "zh".')
    try:
        return resolve_language(language)
    except UnknownLanguageError as error:
        raise invalid(str(error)) from error


async def get_task(request: web.Request) -> web.Response:
    state = request.app[STATE]
    task = await _task(state, request.match_info["task_id"], await _caller(request, state))
    body = {"request_id": _request_id(), "output": _output(task, _base_url(request, state), await _secret(state),
                                                           state.options.task_ttl_hours * 3600)}
    if task.status == SUCCEEDED:
        seconds = math.ceil(task.audio_seconds)
        body["usage"] = {"duration": seconds} if task.request.multi_file else {"seconds": seconds}
    return web.json_response(body)


async def get_result(request: web.Request) -> web.Response:
    """The result document of one file of a finished task (file 0 unless the URL names another). A signed link
    (`?expires=&signature=`, as task results point at) needs no API key."""
    state = request.app[STATE]
    task_id, index = request.match_info["task_id"], request.match_info.get("index", "0")
    position = parse_count(index)
    if "signature" in request.query:
        check_result_link(await _secret(state), task_id, -1 if position is None else position, request.query)
        task = await _task(state, task_id, caller=None)
    else:
        task = await _task(state, task_id, await _caller(request, state))
    entry = task.results[position] if position is not None and position < len(task.results) else None
    if entry is None or "document" not in entry:
        raise APIError(404, f"Task {task.task_id} has no result {index} (it is {task.status}).", code="NotFound")
    return web.json_response(entry["document"])


async def cancel_task(request: web.Request) -> web.Response:
    state = request.app[STATE]
    task_id = request.match_info["task_id"]
    caller = await _caller(request, state)
    if caller is not None:
        await _task(state, task_id, caller)  # another key's task does not exist for this one
    canceled = await state.tasks.run(state.tasks.cancel, task_id)
    if canceled is None:
        task = await _task(state, task_id, caller)
        raise APIError(400, f"Only PENDING tasks can be canceled; task {task_id} is {task.status}.",
                       code="UnsupportedOperation")
    state.metrics.observe_task(canceled)
    return web.json_response({"request_id": _request_id(),
                              "output": {"task_id": task_id, "task_status": canceled.status}})


async def list_tasks(request: web.Request) -> web.Response:
    """`GET /api/v1/tasks?page_no=1&page_size=10&status=...&model_name=...`, newest first: the caller's tasks on a
    server with API keys; every task on one without, if it allows that."""
    state = request.app[STATE]
    caller = await _caller(request, state)
    if caller is None and not state.options.enable_task_listing:
        raise APIError(403, "Listing tasks is turned off on this server: without API keys it would show every "
                       "client's tasks. Query a task by its id, or start the server with --enable-task-listing (or "
                       "with API keys, where each key lists its own).", code="AccessDenied")
    query = request.query
    page_no, page_size = _positive(query, "page_no", 1), _positive(query, "page_size", 10)
    if page_size > MAX_PAGE_SIZE:
        raise invalid(f"page_size must be at most {MAX_PAGE_SIZE}.")
    if page_no > MAX_PAGE_NO:
        raise invalid(f"page_no must be at most {MAX_PAGE_NO}.")
    status = query.get("status") or None
    if status is not None and status not in STATUSES:
        raise invalid(f"Unknown status {status!r}; one of {', '.join(STATUSES)}.")
    tasks, total = await state.tasks.run(state.tasks.page, status, query.get("model_name") or None,
                                         (page_no - 1) * page_size, page_size, caller, read=True)
    data = [{"task_id": t.task_id, "model_name": t.request.model, "status": t.status,
             "gmt_create": _time(t.submit_time), "start_time": _time(t.scheduled_time),
             "end_time": _time(t.end_time)} for t in tasks]
    return web.json_response({"request_id": _request_id(), "data": data, "page_no": page_no,
                              "page_size": page_size, "total": total, "total_page": math.ceil(total / page_size)})


def _output(task: Task, base_url: str, secret: bytes, ttl_s: float) -> dict:
    """Qwen's shape (`result.transcription_url`) for `input.file_url`; Paraformer's (`results[]`,
    `task_metrics`) for `input.file_urls`. Result links are signed, valid as long as the task is kept."""
    output: dict = {"task_id": task.task_id, "task_status": task.status, "submit_time": _time(task.submit_time)}
    if task.scheduled_time is not None:
        output["scheduled_time"] = _time(task.scheduled_time)
    if task.end_time is not None:
        output["end_time"] = _time(task.end_time)
    result_url = f"{base_url}/api/v1/tasks/{task.task_id}/result"
    expires = (task.end_time or time.time()) + ttl_s

    def link(index: int) -> str:
        path = f"{result_url}/{index}" if task.request.multi_file else result_url
        return f"{path}?{result_link_query(secret, task.task_id, index, expires)}"

    if task.request.multi_file and task.results:
        output["results"] = [
            {"file_url": entry["file_url"], "subtask_status": entry["status"],
             **({"transcription_url": link(i)} if "document" in entry else {}),
             **{key: entry[key] for key in ("code", "message") if key in entry}}
            for i, entry in enumerate(task.results)]
        succeeded = sum(entry["status"] == SUCCEEDED for entry in task.results)
        output["task_metrics"] = {"TOTAL": len(task.results), "SUCCEEDED": succeeded,
                                  "FAILED": len(task.results) - succeeded}
    elif task.status == SUCCEEDED:
        output["result"] = {"transcription_url": link(0)}
    if task.code is not None:
        output["code"], output["message"] = task.code, task.message
    return output


async def _task(state: ServerState, task_id: str, caller: str | None) -> Task:
    """The task, if `caller` may see it: its own, one submitted without a key, or any (caller None)."""
    task = await state.tasks.run(state.tasks.get, task_id, read=True)
    if task is None or caller is not None and task.request.key_hash not in (None, caller):
        raise APIError(404, f"Task {task_id!r} does not exist (or has expired).", code="NotFound")
    return task


def _base_url(request: web.Request, state: ServerState) -> str:
    """Where clients reach this server: --public-url, else what a proxy or load balancer says it forwarded
    (X-Forwarded-Proto/-Host/-Prefix, first hop), else the request's own scheme and Host."""
    if state.options.public_url:
        return state.options.public_url.rstrip("/")
    headers = request.headers
    scheme = headers.get("X-Forwarded-Proto", "").split(",")[0].strip() or request.scheme
    host = headers.get("X-Forwarded-Host", "").split(",")[0].strip() or request.host
    prefix = headers.get("X-Forwarded-Prefix", "").split(",")[0].strip().rstrip("/")
    return f"{scheme}://{host}{prefix}"


def _time(seconds: float | None) -> str | None:
    """DashScope's "YYYY-MM-DD HH:MM:SS.mmm", in the server's local time."""
    if seconds is None:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) + f".{int(seconds * 1000) % 1000:03d}"


def _positive(query, name: str, default: int) -> int:
    value = query.get(name)
    if value is None:
        return default
    number = parse_count(value)
    if number is None or number < 1:
        raise invalid(f"{name} must be a positive integer, got {value!r}.")
    return number


def _request_id() -> str:
    return str(uuid.uuid4())
