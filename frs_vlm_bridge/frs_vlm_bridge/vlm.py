"""VLM reasoner: asks an OpenAI-compatible chat-completions server for a coarse direction.

Works with any server that speaks ``POST {base_url}/chat/completions`` with image parts
(vLLM, Ollama, llama.cpp server, hosted APIs). The model sees the instruction, the
end-effector position and the camera image, and must answer with one JSON object (schema in
``build_system_prompt`` / ``answer_json_schema``). Every remote failure (network, HTTP
status, malformed or off-schema answer) becomes a deferral whose reason names the failure, so
the policy simply acts on its own for that chunk; ``propose`` never raises for them.

Only the standard library is used for HTTP, so the package has no client dependency. The
API key is read from an environment variable or a file, held privately by the reasoner, sent
only as ``Authorization: Bearer ...``, and scrubbed from every reason string.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import math
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from frs_steering.reasoning import (
    AMOUNT_MAGNITUDES,
    DEFAULT_DIRECTION_AXES,
    CoarseProposal,
    DirectionAxes,
    Gripper,
    Observation,
    Source,
    defer,
    direction_from_words,
    make_direction_axes,
)
from frs_vlm_bridge.images import downscale_to_max_side, png_data_url

_LOG = logging.getLogger(__name__)

JSON_MODES = ("off", "object", "schema")
MAX_DIRECTION_WORDS = 3
_RETRYABLE_STATUSES = frozenset({408, 429})  # timeouts and rate limits pass; other 4xx do not
_SNIPPET_CHARS = 200


@dataclass(frozen=True)
class VlmConfig:
    """Where and how to ask the VLM.

    ``timeout_s`` bounds each wait for the server once connected, ``connect_timeout_s`` the
    TCP connect; ``deadline_s`` (optional) bounds one whole ``propose`` call including
    retries. Transient failures (timeouts, refused or dropped connections, HTTP 5xx, 408,
    429) are retried up to ``max_retries`` times with exponential backoff from
    ``retry_backoff_s``; other HTTP errors are not. ``json_mode`` asks the server to
    constrain its output: ``"object"`` sends ``response_format: json_object``, ``"schema"``
    sends the full JSON schema (vLLM/OpenAI guided decoding), ``"off"`` sends nothing for
    servers that reject the field. ``direction_axes`` maps the direction words the model may
    use to unit axes of the base frame; ``scene_note`` adds rig-specific text to the prompt
    (e.g. where the camera looks from). ``max_image_side`` downsizes the image before sending.
    The key itself never lives here: only where to read it (``api_key_env`` names an
    environment variable, ``api_key_file`` a file; the variable wins when both are set).
    """

    model: str
    base_url: str = "http://127.0.0.1:8000/v1"
    timeout_s: float = 10.0
    connect_timeout_s: float = 2.0
    deadline_s: float | None = None
    max_retries: int = 2
    retry_backoff_s: float = 0.5
    api_key_env: str | None = None
    api_key_file: str | None = None
    temperature: float = 0.0
    max_tokens: int = 256
    json_mode: str = "object"
    direction_axes: DirectionAxes = field(default_factory=lambda: DEFAULT_DIRECTION_AXES)
    scene_note: str = ""
    max_image_side: int | None = None
    max_response_bytes: int = 1_000_000

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise ValueError("model must name the served model")
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL with a host, got {self.base_url!r}")
        if parts.username or parts.password:
            raise ValueError("base_url must not carry credentials; use api_key_env or api_key_file")
        if parts.query or parts.fragment:
            raise ValueError("base_url must not have a query or fragment")
        if not (self.timeout_s > 0 and self.connect_timeout_s > 0):
            raise ValueError("timeout_s and connect_timeout_s must be > 0")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ValueError("deadline_s must be > 0 or None")
        if self.max_retries < 0 or self.retry_backoff_s < 0:
            raise ValueError("max_retries and retry_backoff_s must be >= 0")
        if self.max_tokens < 1 or self.temperature < 0:
            raise ValueError("max_tokens must be >= 1 and temperature >= 0")
        if self.json_mode not in JSON_MODES:
            raise ValueError(f"json_mode must be one of {JSON_MODES}, got {self.json_mode!r}")
        if self.max_image_side is not None and self.max_image_side < 1:
            raise ValueError("max_image_side must be >= 1 or None")
        object.__setattr__(self, "direction_axes", make_direction_axes(self.direction_axes))


def load_api_key(config: VlmConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The API key from the configured variable or file; None when neither is configured.

    Raises ValueError (without the key in the message) when a configured source is missing,
    empty, or holds something that cannot be sent in an HTTP header.
    """
    environ = os.environ if environ is None else environ
    if not config.api_key_env and not config.api_key_file:
        return None
    key = ""
    if config.api_key_env:
        key = environ.get(config.api_key_env, "").strip()
    if not key and config.api_key_file:
        path = Path(config.api_key_file).expanduser()
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise ValueError(f"cannot read API key file {str(path)!r}: {err.strerror}") from None
    if not key:
        sources = [f"${config.api_key_env}"] if config.api_key_env else []
        sources += [repr(config.api_key_file)] if config.api_key_file else []
        raise ValueError(f"API key not found (looked in {' and '.join(sources)})")
    if any(ch.isspace() or not ch.isprintable() for ch in key):
        raise ValueError("API key contains whitespace or control characters")
    return key


def _axis_text(vector: tuple[float, float, float]) -> str:
    """``+x``-style name of an axis-aligned unit vector, else its components."""
    for index, name in enumerate("xyz"):
        if abs(abs(vector[index]) - 1.0) < 1e-9:
            return ("+" if vector[index] > 0 else "-") + name
    return "(" + ", ".join(f"{c:+.3f}" for c in vector) + ")"


_AXIS_MEANING = {
    "+x": "away from the robot base",
    "-x": "toward the robot base",
    "+y": "to the robot's own left, facing along +x",
    "-y": "to the robot's own right, facing along +x",
    "+z": "up, away from the table",
    "-z": "down, toward the table",
}


def build_system_prompt(axes: DirectionAxes, scene_note: str = "") -> str:
    """System prompt: the task, the frame convention, and the strict JSON answer schema."""
    axis_lines = "\n".join(
        f"  {word}: {_axis_text(v)}"
        + (f" ({_AXIS_MEANING[_axis_text(v)]})" if _axis_text(v) in _AXIS_MEANING else "")
        for word, v in axes.items()
    )
    words = ", ".join(f'"{w}"' for w in axes)
    note = f"\nAbout this rig: {scene_note.strip()}\n" if scene_note.strip() else ""
    return f"""\
You guide a robot arm one short motion chunk (about one second) at a time. A low-level policy \
does the precise motion; you only give a coarse direction for the gripper, or defer to the \
policy.

Frame convention: every direction is in the ROBOT BASE frame (x forward, y left, z up, \
metres), NOT left/right/up/down of the image. The camera may look at the robot from any side, \
so work out where the robot base is before answering. Words and the base-frame axis each one \
moves the gripper along:
{axis_lines}
{note}
Answer with exactly one JSON object and nothing else (no prose, no code fences). Example:
{{"defer": false, "direction": ["left", "down"], "amount": "more", "gripper": "keep", \
"point": [312, 188], "reason": "the red cube is to the robot's left, below the gripper"}}

Fields:
- "defer" (boolean, required): true when the policy should act on its own for this chunk \
(it is already doing the right thing, you are unsure, or nothing in view fits the \
instruction). When true, only "reason" is read.
- "direction" (array of 0 to {MAX_DIRECTION_WORDS} distinct strings from {words}; required): \
several words move diagonally; never combine opposite words; [] holds position (for example \
to only open or close the gripper).
- "amount" ("more" or "less"; required): "more" for a full step, "less" for a small step when \
the gripper is already close to where it should be.
- "gripper" ("keep", "open" or "close"; required).
- "point" ([u, v] or null; optional): pixel of the object or place you are steering toward, \
u rightward from the left image edge, v downward from the top edge.
- "reason" (string, required): one short sentence."""


def answer_json_schema(axes: DirectionAxes) -> dict[str, Any]:
    """JSON schema of the answer, for servers that constrain decoding to a schema."""
    return {
        "type": "object",
        "properties": {
            "defer": {"type": "boolean"},
            "direction": {
                "type": "array",
                "items": {"type": "string", "enum": list(axes)},
                "maxItems": MAX_DIRECTION_WORDS,
                "uniqueItems": True,
            },
            "amount": {"type": "string", "enum": list(AMOUNT_MAGNITUDES)},
            "gripper": {"type": "string", "enum": [g.word for g in Gripper]},
            "point": {
                "anyOf": [
                    {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
                    {"type": "null"},
                ]
            },
            "reason": {"type": "string"},
        },
        "required": ["defer", "direction", "amount", "gripper", "reason"],
        "additionalProperties": False,
    }


class AnswerError(ValueError):
    """The model's answer is not valid JSON or does not follow the schema."""


@dataclass(frozen=True)
class VlmAnswer:
    """A schema-valid answer, before it becomes a proposal."""

    defer: bool
    direction_words: tuple[str, ...] = ()
    amount: str = "more"
    gripper: Gripper = Gripper.KEEP
    point: tuple[float, float] | None = None
    reason: str = ""


_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCED = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_WORD_SEPARATORS = re.compile(r"[\s,+]+")


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _SNIPPET_CHARS else flat[:_SNIPPET_CHARS] + "..."


def _json_loads(text: str, what: str) -> Any:
    """``json.loads`` of ``text``; AnswerError (naming ``what``) for text that is valid JSON
    but that Python refuses to decode, which ``json`` raises as other errors than
    JSONDecodeError: nesting past the recursion limit, an integer past the digit limit."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise AnswerError(f"{what} is nested too deeply to decode") from None
    except ValueError as err:
        raise AnswerError(f"{what} cannot be decoded: {_snippet(str(err))}") from None


def extract_json_object(text: str) -> dict[str, Any]:
    """The JSON object in a model's reply, tolerating code fences and reasoning blocks."""
    body = _THINK_BLOCK.sub("", text).strip()
    fenced = _FENCED.search(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        value = _json_loads(body, "answer")
    except json.JSONDecodeError as first_error:
        start, end = body.find("{"), body.rfind("}")
        if start < 0 or end <= start:
            raise AnswerError(
                f"answer is not valid JSON ({first_error.msg}): {_snippet(text)!r}"
            ) from None
        try:
            value = _json_loads(body[start : end + 1], "answer")
        except json.JSONDecodeError as err:
            raise AnswerError(
                f"answer is not valid JSON ({err.msg} at char {err.pos}): {_snippet(text)!r}"
            ) from None
    if not isinstance(value, dict):
        raise AnswerError(f"answer must be a JSON object, got {type(value).__name__}")
    return value


def _is_finite_number(value: object) -> bool:
    """A JSON number that is finite as a float (an integer too large for one is not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def parse_answer(
    text: str, axes: DirectionAxes, image_size: tuple[int, int] | None = None
) -> VlmAnswer:
    """Validate a reply against the answer schema; AnswerError names the offending field.

    ``image_size`` is (width, height) of the image the model saw; a ``point`` must lie in it
    and is dropped when no image was sent. Unknown extra fields are ignored.
    """
    data = extract_json_object(text)
    if "defer" not in data:
        raise AnswerError("field 'defer' is missing")
    if not isinstance(data["defer"], bool):
        raise AnswerError(f"field 'defer' must be a boolean, got {data['defer']!r}")
    reason = data.get("reason", "")
    if reason is None:
        reason = ""
    if not isinstance(reason, str):
        raise AnswerError(f"field 'reason' must be a string, got {reason!r}")
    reason = _snippet(reason)
    if data["defer"]:
        return VlmAnswer(defer=True, reason=reason)

    for name in ("direction", "amount", "gripper"):
        if name not in data:
            raise AnswerError(f"field {name!r} is missing")
    direction = data["direction"]
    if isinstance(direction, str):
        words = [w for w in _WORD_SEPARATORS.split(direction.strip().lower()) if w]
    elif isinstance(direction, list) and all(isinstance(w, str) for w in direction):
        words = [w.strip().lower() for w in direction]
    else:
        raise AnswerError(f"field 'direction' must be a list of words, got {direction!r}")
    if len(words) > MAX_DIRECTION_WORDS:
        raise AnswerError(f"field 'direction' has more than {MAX_DIRECTION_WORDS} words")
    try:
        direction_from_words(words, axes)
    except ValueError as err:
        raise AnswerError(f"field 'direction': {err}") from None

    amount = data["amount"]
    if not isinstance(amount, str) or amount.strip().lower() not in AMOUNT_MAGNITUDES:
        raise AnswerError(
            f"field 'amount' must be one of {list(AMOUNT_MAGNITUDES)}, got {amount!r}"
        )
    gripper = data["gripper"]
    if not isinstance(gripper, str):
        raise AnswerError(f"field 'gripper' must be a string, got {gripper!r}")
    try:
        gripper_action = Gripper.from_word(gripper)
    except ValueError as err:
        raise AnswerError(f"field 'gripper': {err}") from None

    point = data.get("point")
    parsed_point: tuple[float, float] | None = None
    if point is not None:
        if not (
            isinstance(point, list) and len(point) == 2 and all(_is_finite_number(c) for c in point)
        ):
            raise AnswerError(f"field 'point' must be [u, v] numbers or null, got {point!r}")
        if image_size is not None:
            width, height = image_size
            u, v = float(point[0]), float(point[1])
            if not (0.0 <= u <= width and 0.0 <= v <= height):
                raise AnswerError(f"field 'point' {point} lies outside the {width}x{height} image")
            parsed_point = (u, v)
    return VlmAnswer(
        defer=False,
        direction_words=tuple(words),
        amount=amount.strip().lower(),
        gripper=gripper_action,
        point=parsed_point,
        reason=reason,
    )


class FailureWarnings:
    """Rate-limited operator messages about a failing VLM (times are explicit, in seconds).

    Fed once per proposal: the first failure is reported at once, then at most one report per
    ``period_s`` counting the failures in between, so a dead server neither floods the log nor
    hides; the first success after failures is reported once.
    """

    def __init__(self, period_s: float = 5.0) -> None:
        if not (math.isfinite(period_s) and period_s >= 0.0):
            raise ValueError(f"period_s must be finite and >= 0, got {period_s}")
        self.period_s = period_s
        self._failing = 0  # failed proposals since the VLM last answered
        self._unreported = 0
        self._last_report_s = -math.inf

    def update(self, failed: bool, reason: str, now_s: float) -> tuple[int, str] | None:
        """A ``(logging level, text)`` to log now, or None to stay quiet."""
        if not failed:
            recovered, self._failing, self._unreported = self._failing, 0, 0
            self._last_report_s = -math.inf
            if recovered:
                return logging.INFO, f"VLM answering again after {recovered} failed proposals"
            return None
        self._failing += 1
        self._unreported += 1
        if now_s - self._last_report_s < self.period_s:
            return None
        text = (
            f"VLM failing ({self._unreported} failed proposal"
            f"{'s' if self._unreported > 1 else ''} since the last report, {self._failing} in a"
            f" row); deferring to the policy: {reason}"
        )
        self._unreported, self._last_report_s = 0, now_s
        return logging.WARNING, text


class _RequestFailed(Exception):
    """One HTTP exchange failed; ``transient`` says whether trying again may help."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient


def _completion_text(body: str) -> str:
    """The assistant text in a chat-completions response body (already redacted)."""
    try:
        data = _json_loads(body, "server response")
    except json.JSONDecodeError:
        raise AnswerError(f"server response is not JSON: {_snippet(body)!r}") from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise AnswerError("server response has no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise AnswerError("server response choice has no message")
    content = message.get("content")
    if isinstance(content, list):  # some servers return content parts
        content = "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    if not isinstance(content, str) or not content.strip():
        refusal = message.get("refusal")
        detail = f" (refusal: {_snippet(str(refusal))!r})" if refusal else ""
        raise AnswerError(f"answer is empty{detail}")
    return content


@contextlib.contextmanager
def _cut_off_after(seconds: float | None) -> Iterator[list[socket.socket]]:
    """Shut the sockets added to the yielded list down once ``seconds`` pass, and report that
    as the deadline running out (None: no bound). Socket timeouts bound each wait only, so
    without this a server trickling its reply a byte at a time holds a call past any deadline.
    """
    sockets: list[socket.socket] = []
    if seconds is None:
        yield sockets
        return
    expired = threading.Event()

    def cut_off() -> None:
        expired.set()
        for sock in list(sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(seconds, cut_off)
    timer.daemon = True
    timer.start()
    message = f"timed out: no complete response in the {seconds:.3g} s left"
    ran_out = _RequestFailed(message, True)
    try:
        yield sockets
    except _RequestFailed:
        if expired.is_set():
            raise ran_out from None
        raise
    finally:
        timer.cancel()
    if expired.is_set():  # a read cut short can also end quietly, as if the body were complete
        raise ran_out


class VlmReasoner:
    """Reasoner backed by a remote VLM; defers with a named reason on any remote failure.

    ``clock`` and ``sleep`` are injectable so retry timing is testable and a node can use its
    own clock. The API key is resolved once, here, so a misconfigured key fails at start-up.
    """

    def __init__(
        self,
        config: VlmConfig,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self._api_key = load_api_key(config, environ)
        self._clock = clock
        self._sleep = sleep
        parts = urllib.parse.urlsplit(config.base_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._path = parts.path.rstrip("/") + "/chat/completions"
        self.system_prompt = build_system_prompt(config.direction_axes, config.scene_note)
        #: Proposals in a row that deferred because the VLM failed (0 after a valid answer).
        self.failures_in_a_row = 0

    def __repr__(self) -> str:
        key_state = "set" if self._api_key else "none"
        return (
            f"VlmReasoner(base_url={self.config.base_url!r}, model={self.config.model!r}, "
            f"api_key={key_state})"
        )

    def _redact(self, text: str) -> str:
        """``text`` without the API key. Applied to every outside text before it is cut to a
        snippet: cutting first could leave a partial key that no longer matches."""
        return text.replace(self._api_key, "<redacted>") if self._api_key else text

    def _decode(self, payload: bytes) -> str:
        """A server's response body as redacted text (undecodable bytes replaced)."""
        return self._redact(payload.decode("utf-8", "replace"))

    def build_request(self, observation: Observation) -> tuple[dict[str, Any], int]:
        """Chat-completions payload for an observation, and the image downscale factor."""
        position = ", ".join(
            f"{axis}={value:+.3f}"
            for axis, value in zip("xyz", observation.ee_position, strict=True)
        )
        lines = [
            f"Instruction: {observation.instruction}",
            f"Gripper position in the base frame (metres): {position}",
        ]
        if observation.gripper_opening is not None:  # a closed gripper can still hold a cube
            lines.append(
                f"Gripper opening: {observation.gripper_opening:.2f} (0 = closed, 1 = fully open)."
            )
        factor = 1
        content: list[dict[str, Any]] = []
        if observation.image is not None:
            image, factor = downscale_to_max_side(observation.image, self.config.max_image_side)
            lines.append(f"Camera image attached: {image.shape[1]}x{image.shape[0]} pixels.")
            content.append({"type": "image_url", "image_url": {"url": png_data_url(image)}})
        else:
            lines.append("No camera image is available for this chunk.")
        lines.append("Reply with the JSON object only.")
        content.insert(0, {"type": "text", "text": "\n".join(lines)})
        payload: dict[str, Any] = {
            "model": self.config.model,
            "messages": [
                {"role": "system", "content": self.system_prompt},
                {"role": "user", "content": content},
            ],
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            "stream": False,
        }
        if self.config.json_mode == "object":
            payload["response_format"] = {"type": "json_object"}
        elif self.config.json_mode == "schema":
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": "coarse_direction",
                    "schema": answer_json_schema(self.config.direction_axes),
                },
            }
        return payload, factor

    def _headers(self) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "frs-vlm-bridge",
        }
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _post_once(
        self,
        body: bytes,
        read_timeout: float,
        connect_timeout: float,
        time_left: float | None = None,
    ) -> bytes:
        """One POST; the response body on 2xx, else _RequestFailed saying what went wrong.

        ``time_left`` (s, optional) bounds the whole exchange (see :func:`_cut_off_after`);
        ``read_timeout`` bounds each wait for the server only.
        """
        if self._https:
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                self._host,
                self._port,
                timeout=connect_timeout,
                context=ssl.create_default_context(),
            )
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=connect_timeout)
        phase, limit = "connect", connect_timeout
        with _cut_off_after(time_left) as watched:
            try:
                connection.connect()
                watched.append(connection.sock)  # the response reads it once the connection lets go
                connection.sock.settimeout(read_timeout)
                phase, limit = "response", read_timeout
                connection.request("POST", self._path, body=body, headers=self._headers())
                response = connection.getresponse()
                payload = response.read(self.config.max_response_bytes + 1)
                status, status_text = response.status, response.reason
            except TimeoutError:
                raise _RequestFailed(
                    f"timed out waiting for {phase} ({limit:.3g} s)", True
                ) from None
            except ConnectionRefusedError:
                raise _RequestFailed(
                    f"connection refused by {self._host}:{self._port}", True
                ) from None
            except (ConnectionError, http.client.HTTPException) as err:
                raise _RequestFailed(
                    f"connection error: {type(err).__name__}: {err}", True
                ) from None
            except OSError as err:
                raise _RequestFailed(f"network error: {type(err).__name__}: {err}", False) from None
            finally:
                connection.close()
        if len(payload) > self.config.max_response_bytes:
            raise _RequestFailed(
                f"response larger than {self.config.max_response_bytes} bytes", False
            )
        if 200 <= status < 300:
            return payload
        detail = _snippet(self._decode(payload))
        message = f"HTTP {status} {status_text}" + (f": {detail}" if detail else "")
        if status == 400 and self.config.json_mode != "off":
            message += " (if the server rejects response_format, set json_mode to 'off')"
        raise _RequestFailed(message, status >= 500 or status in _RETRYABLE_STATUSES)

    def _post_with_retries(self, body: bytes, started: float) -> bytes:
        """POST with bounded retries of transient failures inside the optional deadline."""
        config = self.config
        attempt = 0
        while True:
            attempt += 1
            read_timeout, connect_timeout = config.timeout_s, config.connect_timeout_s
            time_left = None
            if config.deadline_s is not None:
                remaining = config.deadline_s - (self._clock() - started)
                read_timeout = max(1e-3, min(read_timeout, remaining))
                connect_timeout = max(1e-3, min(connect_timeout, remaining))
                time_left = max(1e-3, remaining)
            try:
                return self._post_once(body, read_timeout, connect_timeout, time_left)
            except _RequestFailed as failure:
                plural = "s" if attempt > 1 else ""
                summary = f"request failed after {attempt} attempt{plural}: {failure.message}"
                if not failure.transient or attempt > config.max_retries:
                    raise _RequestFailed(summary, failure.transient) from None
                delay = config.retry_backoff_s * 2 ** (attempt - 1)
                if config.deadline_s is not None:
                    if self._clock() - started + delay >= config.deadline_s:
                        raise _RequestFailed(
                            f"{summary} (no time left in the {config.deadline_s:.3g} s deadline)",
                            True,
                        ) from None
                _LOG.debug(
                    "VLM attempt %d failed (%s); retrying in %.3g s",
                    attempt,
                    self._redact(failure.message),
                    delay,
                )
                self._sleep(delay)

    def propose(self, observation: Observation) -> CoarseProposal:
        """Ask the VLM about one observation; any remote failure defers, naming the cause."""
        started = self._clock()

        def deferral(reason: str) -> CoarseProposal:
            return defer(self._redact(f"VLM {reason}"), Source.VLM, self._clock() - started)

        try:
            payload, factor = self.build_request(observation)
            image_size = None
            if observation.image is not None:
                height, width = observation.image.shape[:2]
                image_size = (width // factor, height // factor)
            body = self._post_with_retries(json.dumps(payload).encode("utf-8"), started)
            # Redacted twice: in the raw body, and in the content once JSON escapes are undone.
            text = self._redact(_completion_text(self._decode(body)))
            answer = parse_answer(text, self.config.direction_axes, image_size)
        except _RequestFailed as failure:
            self.failures_in_a_row += 1
            return deferral(failure.message)
        except AnswerError as err:
            self.failures_in_a_row += 1
            return deferral(f"answer rejected: {err}")
        except Exception as err:  # a deferral is always safe; never crash the node
            self.failures_in_a_row += 1
            _LOG.exception("unexpected VLM reasoner error")
            return deferral(f"unexpected error: {type(err).__name__}: {err}")

        self.failures_in_a_row = 0
        latency = self._clock() - started
        if answer.defer:
            return defer(self._redact(f"VLM deferred: {answer.reason}"), Source.VLM, latency)
        image_point = None
        if answer.point is not None:  # back to the pixels of the observation image
            image_point = (
                (answer.point[0] + 0.5) * factor - 0.5,
                (answer.point[1] + 0.5) * factor - 0.5,
            )
        return CoarseProposal(
            source=Source.VLM,
            direction=direction_from_words(answer.direction_words, self.config.direction_axes),
            magnitude=AMOUNT_MAGNITUDES[answer.amount],
            gripper=answer.gripper,
            image_point=image_point,
            reason=self._redact(answer.reason),
            latency_s=latency,
        )
