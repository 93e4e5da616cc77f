"""OpenAI's `POST /v1/audio/transcriptions` and `GET /v1/models`, as the official SDK calls them."""

import asyncio
import contextlib
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO

import numpy as np
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import MultiDictProxy

from qasr.engine import RequestOutput, SamplingParams, Transcription, TranscriptionRequest
from qasr.engine.audio import SAMPLE_RATE, AudioError, AudioTooLongError, load_audio
from qasr.engine.languages import Language, UnknownLanguageError, language_code, resolve_language
from qasr.engine.request import InvalidRequest, output_token_cap
from qasr.engine.words import can_align, check_alignable
from qasr.serve.budget import AudioBudgetExceeded, AudioClaim
from qasr.serve.drain import cut_short
from qasr.serve.errors import APIError, bad_request, error_body, logger, parse_count
from qasr.serve.formats import FORMATS, duration_usage, to_srt, to_verbose_json, to_vtt
from qasr.serve.state import STATE, ServerState

OBSERVED = web.RequestKey("qasr_observed", bool)  # set on a request whose outcome is already in the metrics
STREAM_FORMATS = ("json", "text")
# the engine's request fields as the form names them
FORM_FIELD_OF = {"audio": "file", "context": "prompt", "language": "language",
                 "word_timestamps": "timestamp_granularities[]"}
CUE_FORMATS = ("srt", "vtt", "verbose_json")  # sentence-sized cues where an aligner is loaded
MAX_TEMPERATURE = 2.0


@dataclass(slots=True)
class TranscriptionForm:
    """The form's fields, checked; the audio is decoded later, off the event loop."""

    file: IO[bytes]
    model: str
    language: Language | None  # None: the model detects it
    prompt: str
    response_format: str
    temperature: float
    stream: bool
    max_tokens: int | None  # vLLM's max_completion_tokens; None: the engine's default
    words: bool = False  # timestamp_granularities[]=word: `words` in verbose_json
    align: bool = False  # run the forced aligner: for words, or for sentence-sized cues


async def create_transcription(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    started = time.monotonic()
    try:
        if state.engine_failed:
            raise engine_unavailable()
        _admit(state)  # before the upload too, not to read one only to refuse it
        # only a read form counts toward the limit: uploads that stall must not lock every other client out
        form = await _read_form(request, state)
        _admit(state)
        state.in_flight += 1
        try:
            return await _transcribe(request, state, form, started)
        finally:
            state.in_flight -= 1
    except (Exception, asyncio.CancelledError) as error:
        if not request.get(OBSERVED):  # e.g. a client that hangs up after a streamed error event
            state.metrics.observe_failure(_failure_status(error))
        raise


def _failure_status(error: BaseException) -> str:
    if isinstance(error, APIError):
        return "client_error" if error.status < 500 else "server_error"
    if isinstance(error, asyncio.CancelledError | ConnectionResetError):  # the client hung up: its request is aborted
        return "aborted"
    return "server_error"


def _admit(state: ServerState) -> None:
    if state.in_flight >= state.max_in_flight:
        raise APIError(429, f"The server is at capacity ({state.in_flight} requests in flight); retry later.",
                       code="too_many_requests", retry_after=1)


async def _transcribe(request: web.Request, state: ServerState, form: MultiDictProxy,
                      started: float) -> web.StreamResponse:
    params = parse_request(form, state.model_names, state.options.max_prompt_chars, state.engine.has_aligner)
    if params.prompt and (tokens := state.engine.count_tokens(params.prompt)) > state.options.max_prompt_tokens:
        raise bad_request(f"prompt is {tokens} tokens long; at most {state.options.max_prompt_tokens} are allowed.",
                          param="prompt", code="prompt_too_long")
    audio = state.audio_budget.claim(refusable=True)  # held until the answer is out
    try:
        samples = await asyncio.get_running_loop().run_in_executor(
            state.audio_pool, _read_audio, params.file, state.options.max_upload_bytes,
            state.options.max_audio_seconds, audio)
        return await _answer(request, state, params, samples, started)
    finally:
        audio.release()


async def _answer(request: web.Request, state: ServerState, params: TranscriptionForm, samples: np.ndarray,
                  started: float) -> web.StreamResponse:
    # as long as the client asks, but never longer than the audio can need: a longer output is the model repeating
    # itself, at the engine's expense (each piece is capped by its own length, at most max_piece_seconds)
    piece_seconds = min(len(samples) / SAMPLE_RATE, state.engine.engine.config.max_piece_seconds)
    sampling = SamplingParams(temperature=params.temperature, max_tokens=min(
        params.max_tokens or SamplingParams().max_tokens, output_token_cap(piece_seconds)))
    request_id = f"trsc-{uuid.uuid4().hex}"
    headers = {"X-Request-Id": request_id}
    stream = state.engine.stream(TranscriptionRequest(samples, language=params.language, context=params.prompt,
                                                      sampling_params=sampling, request_id=request_id,
                                                      word_timestamps=params.align, stream=params.stream))
    async with contextlib.aclosing(stream) as outputs:  # leaving early, however, aborts the engine request
        try:
            output = await anext(outputs)  # before any byte is sent, so a failure still gets its HTTP status
            while not (params.stream or output.finished):
                output = await anext(outputs)
        except (ValueError, RuntimeError) as error:
            raise engine_failure(state, error) from error
        if params.stream:
            return await _stream_events(request, state, outputs, output, started, headers)
    result = _result(output)
    response = _response(result, params, headers)
    state.metrics.observe_success(result, time.monotonic() - started)
    return response



async def _read_form(request: web.Request, state: ServerState) -> MultiDictProxy:
    limit = state.options.max_upload_bytes
    if request.content_length is not None and request.content_length > state.options.max_body_bytes:
        raise too_large(limit)
    if request.content_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise bad_request(f"Expected a multipart/form-data body, got {request.content_type!r}.")
    try:
        return await asyncio.wait_for(request.post(), state.options.upload_timeout_s)
    except TimeoutError as error:
        raise APIError(408, f"The request body did not arrive within {state.options.upload_timeout_s:g} s.",
                       code="request_timeout") from error
    except web.HTTPRequestEntityTooLarge as error:
        if "form fields" in error.text:  # aiohttp's cap on the number of fields, not on the size
            raise APIError(413, f"The form has too many fields: {error.text}", code="too_many_fields") from error
        raise too_large(limit) from error
    # LookupError: an unknown charset; RuntimeError: an unknown Content-Transfer-Encoding; HttpProcessingError: a
    # part's headers do not parse
    except (ValueError, LookupError, RuntimeError, HttpProcessingError) as error:
        raise bad_request(f"Could not parse the form body: {error}") from error


def parse_request(form: MultiDictProxy, model_names: list[str], max_prompt_chars: int,
                  has_aligner: bool = False) -> TranscriptionForm:
    file = form.get("file")
    if file is None:
        raise bad_request("Missing required parameter: 'file'.", param="file")
    if not isinstance(file, web.FileField):
        raise bad_request("'file' must be an uploaded file, not a text field.", param="file")

    model = _text(form, "model") or model_names[0]
    if model not in model_names:
        raise APIError(404, f"The model `{model}` does not exist. Served: {', '.join(model_names)}.",
                       param="model", code="model_not_found")

    response_format = _text(form, "response_format") or "json"
    if response_format not in FORMATS:
        raise bad_request(f"Unsupported response_format {response_format!r}; supported: "
                          f"{', '.join(FORMATS)}.", param="response_format")

    stream = _boolean(form, "stream")
    if stream and response_format not in STREAM_FORMATS:
        raise bad_request(f"Streaming supports response_format json or text, not {response_format!r}.",
                          param="response_format")

    words = False
    for granularity in form.getall("timestamp_granularities[]", []) + form.getall("timestamp_granularities", []):
        if not isinstance(granularity, str):
            raise bad_request("'timestamp_granularities[]' must be a text field, not a file.",
                              param="timestamp_granularities[]")
        if granularity not in ("segment", "word"):
            raise bad_request(f"Unknown timestamp granularity {granularity!r}; supported: segment, word.",
                              param="timestamp_granularities[]")
        words = words or granularity == "word"
    if words and not has_aligner:
        raise bad_request("Word timestamps need a forced aligner, and this server has none (start it with "
                          "--aligner-model); use timestamp_granularities[]=segment.",
                          param="timestamp_granularities[]")
    if words and response_format != "verbose_json":
        raise bad_request("timestamp_granularities[]=word needs response_format verbose_json.",
                          param="timestamp_granularities[]")

    try:
        language = resolve_language(_text(form, "language"))
    except UnknownLanguageError as error:
        raise bad_request(str(error), param="language") from error
    if words:
        try:
            check_alignable(language)
        except InvalidRequest as error:
            raise bad_request(str(error), param="language") from error
    # cues follow the words where the aligner can time them; elsewhere they stay one per audio piece
    align = words or (has_aligner and response_format in CUE_FORMATS and (language is None or can_align(language)))

    temperature = _number(form, "temperature", 0.0)
    if not 0.0 <= temperature <= MAX_TEMPERATURE:
        raise bad_request(f"temperature must be between 0 and {MAX_TEMPERATURE:g}, got {temperature:g}.",
                          param="temperature")

    max_tokens_text = _text(form, "max_completion_tokens")
    max_tokens = parse_count(max_tokens_text) if max_tokens_text else None
    if max_tokens_text and (max_tokens is None or max_tokens < 1):
        raise bad_request(f"max_completion_tokens must be a positive integer, got {max_tokens_text!r}.",
                          param="max_completion_tokens")

    # the engine tokenizes the prompt on its own thread, where a huge one would stall every request
    prompt = _text(form, "prompt") or ""
    if len(prompt) > max_prompt_chars:
        raise bad_request(f"prompt is {len(prompt)} characters long; at most {max_prompt_chars} are allowed.",
                          param="prompt", code="prompt_too_long")

    return TranscriptionForm(file=file.file, model=model, language=language, prompt=prompt,
                                response_format=response_format, temperature=temperature, stream=stream,
                                max_tokens=max_tokens, words=words, align=align)


def _text(form: MultiDictProxy, name: str) -> str | None:
    value = form.get(name)
    if value is not None and not isinstance(value, str):
        raise bad_request(f"'{name}' must be a text field, not a file.", param=name)
    return value.strip() if value is not None else None


def _boolean(form: MultiDictProxy, name: str) -> bool:
    value = (_text(form, name) or "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise bad_request(f"'{name}' must be true or false, got {value!r}.", param=name)
    return value in ("true", "1")


def _number(form: MultiDictProxy, name: str, default: float) -> float:
    value = _text(form, name)
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise bad_request(f"'{name}' must be a number, got {value!r}.", param=name)
    return number


def _read_audio(file: IO[bytes], limit: int, max_seconds: float, claim: AudioClaim) -> np.ndarray:
    """Runs on the audio pool: reading and decoding a large upload would stall every other request."""
    data = file.read()
    if len(data) > limit:
        raise too_large(limit)
    try:
        return load_audio(data, max_seconds=max_seconds, on_decoded=claim)
    except AudioBudgetExceeded as error:
        raise APIError(429, f"The server holds too much audio right now ({error}); retry later.",
                       code="too_much_audio", retry_after=1) from error
    except AudioTooLongError as error:
        raise bad_request(f"The audio is too long: {error}.", param="file", code="audio_too_long") from error
    except AudioError as error:
        raise bad_request(f"Could not read the audio file: {error}.", param="file",
                          code="invalid_audio") from error


async def _stream_events(request: web.Request, state: ServerState, outputs: AsyncIterator[RequestOutput],
                         output: RequestOutput, started: float, headers: dict[str, str]) -> web.StreamResponse:
    """Server-sent events as OpenAI sends them: `transcript.text.delta`s, `transcript.text.done`, then `[DONE]`
    (which vLLM and sglang-omni send too; the SDK stops on it). A failure after the first event becomes an
    `{"error": ...}` event, which the SDK raises as an APIError."""
    response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    try:
        while True:
            if output.delta:
                await _send(response, {"type": "transcript.text.delta", "delta": output.delta})
            if output.finished:
                break
            output = await _next_keeping_alive(response, outputs, state.options.sse_keepalive_s)
        result = _result(output)
    except (ValueError, RuntimeError) as failure:
        error = engine_failure(state, failure)
        state.metrics.observe_failure(_failure_status(error))
        request[OBSERVED] = True
        await _send(response, error_body(error))
        await response.write_eof()
        return response
    done: dict = {"type": "transcript.text.done", "text": result.text}
    if code := language_code(result.language):
        done["languages"] = [{"code": code}]  # as the json response has them (the SDK's TranscriptionTextDoneEvent)
    if result.metrics is not None:
        done["usage"] = {"type": "tokens", "input_tokens": result.metrics.num_prompt_tokens,
                         "output_tokens": result.metrics.num_output_tokens,
                         "total_tokens": result.metrics.num_prompt_tokens + result.metrics.num_output_tokens}
    await _send(response, done)
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    state.metrics.observe_success(result, time.monotonic() - started)
    return response


async def _next_keeping_alive(response: web.StreamResponse, outputs: AsyncIterator[RequestOutput],
                              interval: float) -> RequestOutput:
    """The next output; while none comes (a long queue), an SSE comment every `interval` seconds keeps load
    balancers' idle timeouts from cutting the stream. SSE clients ignore comments."""
    pending = asyncio.ensure_future(anext(outputs))
    try:
        while not (await asyncio.wait({pending}, timeout=interval))[0]:
            await response.write(b": keep-alive\n\n")
        return pending.result()
    finally:
        if not pending.done():  # cancelled (the client left): stop the read before the stream is closed
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending


async def _send(response: web.StreamResponse, event: dict) -> None:
    await response.write(b"data: " + json.dumps(event, ensure_ascii=False).encode() + b"\n\n")


def _result(output: RequestOutput) -> Transcription:
    if output.result is None:
        raise RuntimeError("the engine finished a request without a result")
    return output.result


def _response(result: Transcription, params: TranscriptionForm, headers: dict[str, str]) -> web.Response:
    fmt = params.response_format
    if fmt == "json":
        body: dict = {"text": result.text, "usage": duration_usage(result)}
        if code := language_code(result.language):
            body["languages"] = [{"code": code}]
        return web.json_response(body, headers=headers)
    if fmt == "verbose_json":
        return web.json_response(to_verbose_json(result, params.temperature, params.words), headers=headers)
    if fmt == "srt":
        return web.Response(text=to_srt(result), content_type="text/plain", headers=headers)
    if fmt == "vtt":
        return web.Response(text=to_vtt(result), content_type="text/vtt", headers=headers)
    return web.Response(text=result.text + "\n", content_type="text/plain", headers=headers)


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response({"object": "list", "data": [_model_card(state, name) for name in state.model_names]})


async def retrieve_model(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name = request.match_info["model"]
    if name not in state.model_names:
        raise APIError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")
    return web.json_response(_model_card(state, name))


def _model_card(state: ServerState, name: str) -> dict:
    engine = state.engine.engine
    return {"id": name, "object": "model", "created": state.created, "owned_by": "qasr",
            "root": str(engine.model_path), "parent": None, "max_model_len": engine.max_model_len}


def engine_unavailable() -> APIError:
    return APIError(503, "The engine has stopped; this server cannot transcribe until it is restarted.",
                    code="engine_unavailable", retry_after=10)


def engine_failure(state: ServerState, error: Exception) -> APIError:
    """What the engine raised, as the client should see it: its ValueErrors name the request's fault (too long
    for max_model_len, a special token in the prompt), a stopped engine is a 503; anything else is ours."""
    if isinstance(error, InvalidRequest):
        return bad_request(str(error), param=FORM_FIELD_OF.get(error.field))
    if isinstance(error, ValueError):
        return bad_request(str(error))
    if state.engine_failed:
        return cut_short() if state.drain.draining else engine_unavailable()
    logger.error("the engine failed request: %r", error)
    return APIError(500, "The engine failed while processing your request.")


def too_large(limit: int) -> APIError:
    return APIError(413, f"Maximum content size limit ({limit}) exceeded.", param="file",
                    code="request_too_large")
