"""VLM reasoner against a real local OpenAI-compatible HTTP endpoint with scripted answers."""

import base64
import json
import logging
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from test_bridge_images import decode_png

from frs_steering.reasoning import MAGNITUDE_LESS, Gripper, Observation, Source
from frs_vlm_bridge.vlm import (
    FailureWarnings,
    VlmConfig,
    VlmReasoner,
    answer_json_schema,
    build_system_prompt,
    load_api_key,
    parse_answer,
)

SECRET = "sk-test-9f8e7d6c5b4a"
KEY_ENV = "FRS_TEST_VLM_KEY"
S = 1 / np.sqrt(2)
IMAGE = np.random.default_rng(3).integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
OBS = Observation("put the red cube in the bowl", ee_position=[0.412, -0.031, 0.25], image=IMAGE)
VALID = {
    "defer": False,
    "direction": ["left", "down"],
    "amount": "less",
    "gripper": "close",
    "point": [3, 2],
    "reason": "the cube is to the robot's left, below the gripper",
}


def completion(content: str) -> bytes:
    message = {"role": "assistant", "content": content}
    return json.dumps(
        {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    ).encode()


class ScriptedServer:
    """Chat-completions endpoint on 127.0.0.1 that records requests and replays a script.

    Each scripted reply is (status, body bytes, delay seconds); the last one repeats. With
    ``trickle_s`` > 0 the body goes out one byte at a time, that many seconds apart.
    """

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: list[tuple[int, bytes, float]] = []
        self.trickle_s = 0.0
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                server.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                index = min(len(server.requests), len(server.script)) - 1
                status, reply, delay = server.script[index]
                if delay and server._stop.wait(delay):
                    return
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    if not server.trickle_s:
                        self.wfile.write(reply)
                        return
                    for byte in reply:
                        if server._stop.wait(server.trickle_s):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                except OSError:  # the client gave up (timeout test)
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def answer(self, content: str, status: int = 200, delay: float = 0.0) -> None:
        self.script.append((status, completion(content), delay))

    def fail(self, status: int, body: bytes = b'{"error": "scripted"}', delay: float = 0.0) -> None:
        self.script.append((status, body, delay))

    def close(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    scripted = ScriptedServer()
    yield scripted
    scripted.close()


def make_reasoner(url: str, **overrides) -> VlmReasoner:
    settings = dict(
        model="test-vlm",
        base_url=url,
        timeout_s=0.3,
        connect_timeout_s=0.3,
        max_retries=2,
        retry_backoff_s=0.01,
        api_key_env=KEY_ENV,
    )
    settings.update(overrides)
    return VlmReasoner(VlmConfig(**settings), environ={KEY_ENV: SECRET})


def test_valid_answer_becomes_a_proposal_and_the_request_carries_everything(server):
    server.answer(json.dumps(VALID))
    proposal = make_reasoner(server.url).propose(OBS)

    assert not proposal.defer and proposal.source is Source.VLM
    np.testing.assert_allclose(proposal.direction, [0, S, -S])
    assert proposal.magnitude == MAGNITUDE_LESS and proposal.gripper is Gripper.CLOSE
    assert proposal.image_point == (3.0, 2.0)
    assert proposal.reason == VALID["reason"] and proposal.latency_s >= 0

    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {SECRET}"
    body = request["body"]
    assert body["model"] == "test-vlm" and body["response_format"] == {"type": "json_object"}
    system, user = body["messages"]
    assert system["role"] == "system" and "ROBOT BASE frame" in system["content"]
    text_part, image_part = user["content"]
    assert "put the red cube in the bowl" in text_part["text"]
    assert "x=+0.412, y=-0.031, z=+0.250" in text_part["text"]
    url = image_part["image_url"]["url"]
    assert image_part["type"] == "image_url" and url.startswith("data:image/png;base64,")
    np.testing.assert_array_equal(decode_png(base64.b64decode(url.split(",", 1)[1])), IMAGE)


@pytest.mark.parametrize(
    "content",
    [
        "Here you go:\n```json\n" + json.dumps(VALID) + "\n```",
        "<think>the cube {is} left</think>" + json.dumps(VALID),
        "Answer: " + json.dumps(VALID) + " Hope that helps.",
    ],
)
def test_wrapped_answers_are_accepted(server, content):
    server.answer(content)
    proposal = make_reasoner(server.url).propose(OBS)
    assert not proposal.defer, proposal.reason
    np.testing.assert_allclose(proposal.direction, [0, S, -S])


def test_direction_given_as_one_string(server):
    server.answer(json.dumps({**VALID, "direction": "forward up", "amount": "more"}))
    proposal = make_reasoner(server.url).propose(OBS)
    np.testing.assert_allclose(proposal.direction, [S, 0, S])
    assert proposal.magnitude == 1.0


def test_model_deferral_keeps_its_reason(server):
    server.answer('{"defer": true, "reason": "I cannot see the cube"}')
    proposal = make_reasoner(server.url).propose(OBS)
    assert proposal.defer and proposal.reason == "VLM deferred: I cannot see the cube"
    np.testing.assert_array_equal(proposal.direction, 0)


def test_malformed_json_defers(server):
    server.answer('{"defer": false, "direction": ["left"')
    proposal = make_reasoner(server.url).propose(OBS)
    assert proposal.defer and "not valid JSON" in proposal.reason
    assert len(server.requests) == 1  # a bad answer is not a transient failure


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"direction": ["northwest"]}, "'northwest'"),
        ({"direction": ["left", "right"]}, "contradict"),
        ({"direction": 3}, "direction"),
        ({"defer": "false"}, "defer"),
        ({"amount": "lots"}, "amount"),
        ({"gripper": 1}, "gripper"),
        ({"gripper": "squeeze"}, "squeeze"),
        ({"point": [300, 2]}, "outside"),
        ({"point": "middle"}, "point"),
        ({"reason": 5}, "reason"),
        ({"amount": None}, "amount"),
    ],
)
def test_schema_violations_defer_naming_the_field(server, change, field):
    server.answer(json.dumps({**VALID, **change}))
    proposal = make_reasoner(server.url).propose(OBS)
    assert proposal.defer and proposal.source is Source.VLM
    assert "answer rejected" in proposal.reason and field in proposal.reason


def test_missing_field_and_non_object_answers_defer(server):
    server.answer(json.dumps({key: v for key, v in VALID.items() if key != "gripper"}))
    server.answer("[1, 2, 3]")
    reasoner = make_reasoner(server.url)
    assert "'gripper' is missing" in reasoner.propose(OBS).reason
    assert "JSON object" in reasoner.propose(OBS).reason


def test_non_json_server_response_defers(server):
    server.fail(200, b"<html>proxy error</html>")
    proposal = make_reasoner(server.url).propose(OBS)
    assert proposal.defer and "server response is not JSON" in proposal.reason


def test_timeout_defers_within_bounded_time(server):
    server.answer(json.dumps(VALID), delay=2.0)
    reasoner = make_reasoner(server.url, max_retries=1)
    started = time.monotonic()
    proposal = reasoner.propose(OBS)
    elapsed = time.monotonic() - started
    assert proposal.defer and "timed out" in proposal.reason and "2 attempts" in proposal.reason
    assert 0.55 < elapsed < 1.2
    assert len(server.requests) == 2


def test_deadline_bounds_the_whole_call(server):
    server.answer(json.dumps(VALID), delay=2.0)
    reasoner = make_reasoner(server.url, max_retries=10, deadline_s=0.5)
    started = time.monotonic()
    proposal = reasoner.propose(OBS)
    assert proposal.defer and "timed out" in proposal.reason
    assert time.monotonic() - started < 0.9


def test_deadline_bounds_a_server_that_trickles_its_reply(server):
    """Each byte arrives well inside timeout_s, so only the deadline can end the call."""
    server.trickle_s = 0.05  # the whole reply would take ~15 s
    server.answer(json.dumps(VALID))
    reasoner = make_reasoner(server.url, max_retries=10, deadline_s=0.5)
    started = time.monotonic()
    proposal = reasoner.propose(OBS)
    assert time.monotonic() - started < 0.9
    assert proposal.defer and "no complete response" in proposal.reason, proposal.reason


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (completion("[" * 100_000 + "]" * 100_000), "answer is nested too deeply"),
        (b"[" * 100_000 + b"]" * 100_000, "server response is nested too deeply"),
        (completion('{"defer": true, "reason": 1' + "0" * 5000 + "}"), "cannot be decoded"),
        (completion(json.dumps({**VALID, "point": [10**400, 2]})), "field 'point'"),
        (json.dumps({"choices": [{"message": {"content": [{"text": 5}]}}]}).encode(), "empty"),
    ],
    ids=["deep-answer", "deep-response", "long-integer", "huge-point", "non-text-part"],
)
def test_json_python_cannot_decode_is_rejected_without_a_traceback(server, caplog, reply, expected):
    server.fail(200, reply)
    with caplog.at_level(logging.ERROR, logger="frs_vlm_bridge.vlm"):
        proposal = make_reasoner(server.url).propose(OBS)
    assert proposal.defer and "answer rejected" in proposal.reason, proposal.reason
    assert expected in proposal.reason and not caplog.records


def test_server_error_is_retried_then_succeeds(server):
    server.fail(500)
    server.answer(json.dumps(VALID))
    proposal = make_reasoner(server.url).propose(OBS)
    assert not proposal.defer, proposal.reason
    assert len(server.requests) == 2


def test_persistent_server_errors_give_up_after_max_retries(server):
    server.fail(503, b'{"error": "overloaded"}')
    proposal = make_reasoner(server.url, max_retries=2).propose(OBS)
    assert proposal.defer and "HTTP 503" in proposal.reason and "3 attempts" in proposal.reason
    assert "overloaded" in proposal.reason
    assert len(server.requests) == 3


def test_unauthorized_defers_without_retry(server):
    server.fail(401, json.dumps({"error": f"invalid key {SECRET}"}).encode())
    proposal = make_reasoner(server.url).propose(OBS)
    assert proposal.defer and "HTTP 401" in proposal.reason and "1 attempt:" in proposal.reason
    assert SECRET not in proposal.reason and "<redacted>" in proposal.reason
    assert len(server.requests) == 1


def test_bad_request_hints_at_json_mode(server):
    server.fail(400, b'{"error": "response_format not supported"}')
    proposal = make_reasoner(server.url).propose(OBS)
    assert proposal.defer and "json_mode" in proposal.reason
    assert len(server.requests) == 1


def test_connection_refused_defers():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    reasoner = make_reasoner(f"http://127.0.0.1:{port}/v1", max_retries=1)
    proposal = reasoner.propose(OBS)
    assert proposal.defer and "connection refused" in proposal.reason
    assert "2 attempts" in proposal.reason


def test_api_key_never_leaks(server, tmp_path, caplog):
    key_file = tmp_path / "key"
    key_file.write_text(SECRET + "\n")
    config = VlmConfig(
        model="test-vlm",
        base_url=server.url,
        timeout_s=0.3,
        max_retries=1,
        retry_backoff_s=0.01,
        api_key_file=str(key_file),
    )
    reasoner = VlmReasoner(config, environ={})
    assert SECRET not in repr(config) and SECRET not in repr(reasoner)
    assert SECRET not in str(config.__dict__)

    server.fail(500, f"upstream rejected {SECRET}".encode())
    server.answer(json.dumps({**VALID, "reason": f"my key is {SECRET}"}))
    with caplog.at_level(logging.DEBUG, logger="frs_vlm_bridge"):
        proposal = reasoner.propose(OBS)
    assert len(server.requests) == 2 and "retrying" in caplog.text
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert SECRET not in caplog.text and SECRET not in proposal.reason


def test_api_key_configuration_errors(tmp_path):
    config = VlmConfig(model="m", api_key_env=KEY_ENV)
    with pytest.raises(ValueError, match=KEY_ENV):
        load_api_key(config, environ={})
    missing_file = VlmConfig(model="m", api_key_file=str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="cannot read"):
        VlmReasoner(missing_file, environ={})
    assert load_api_key(VlmConfig(model="m"), environ={KEY_ENV: SECRET}) is None
    with pytest.raises(ValueError, match="control"):
        load_api_key(config, environ={KEY_ENV: "abc\x07def"})
    with pytest.raises(ValueError, match="credentials"):
        VlmConfig(model="m", base_url="http://user:pw@host/v1")


def test_no_key_means_no_authorization_header(server):
    server.answer(json.dumps(VALID))
    VlmReasoner(VlmConfig(model="m", base_url=server.url, timeout_s=0.3)).propose(OBS)
    assert "Authorization" not in server.requests[0]["headers"]


def test_json_modes_and_text_only_observation(server):
    server.answer(json.dumps(VALID))
    schema_reasoner = make_reasoner(server.url, json_mode="schema")
    text_only = Observation("open the drawer", ee_position=[0.3, 0.1, 0.4])
    proposal = schema_reasoner.propose(text_only)
    assert proposal.image_point is None  # no image was sent, so no pixel to point at
    body = server.requests[0]["body"]
    assert body["response_format"]["json_schema"]["schema"] == answer_json_schema(
        schema_reasoner.config.direction_axes
    )
    (text_part,) = body["messages"][1]["content"]
    assert "No camera image" in text_part["text"]

    make_reasoner(server.url, json_mode="off").propose(OBS)
    assert "response_format" not in server.requests[1]["body"]
    with pytest.raises(ValueError, match="json_mode"):
        VlmConfig(model="m", json_mode="yes")


def test_the_gripper_opening_reaches_the_vlm_only_when_read(server):
    server.answer(json.dumps(VALID))
    reasoner = make_reasoner(server.url)
    reasoner.propose(Observation("lift the cube", ee_position=[0.3, 0.1, 0.4], gripper_opening=0.0))
    reasoner.propose(Observation("lift the cube", ee_position=[0.3, 0.1, 0.4]))
    texts = [r["body"]["messages"][1]["content"][0]["text"] for r in server.requests]
    assert "Gripper opening: 0.00 (0 = closed, 1 = fully open)." in texts[0]
    assert "Gripper opening" not in texts[1]  # no finger joints: nothing made up


def test_downscaled_image_point_maps_back_to_observation_pixels(server):
    server.answer(json.dumps({**VALID, "point": [1, 1]}))
    proposal = make_reasoner(server.url, max_image_side=4).propose(OBS)
    assert proposal.image_point == (2.5, 2.5)
    url = server.requests[0]["body"]["messages"][1]["content"][1]["image_url"]["url"]
    assert decode_png(base64.b64decode(url.split(",", 1)[1])).shape == (3, 4, 3)


def test_prompt_describes_the_configured_mapping():
    prompt = build_system_prompt(
        {"toward_camera": (1.0, 0.0, 0.0), "tilted": (0.6, 0.8, 0.0)},
        scene_note="Camera faces the robot.",
    )
    assert "toward_camera: +x (away from the robot base)" in prompt
    assert "tilted: (+0.600, +0.800, +0.000)" in prompt and "Camera faces the robot." in prompt
    answer = parse_answer(
        '{"defer": false, "direction": ["tilted"], "amount": "more", '
        '"gripper": "keep", "reason": ""}',
        {"tilted": (0.6, 0.8, 0.0)},
    )
    assert answer.direction_words == ("tilted",)


@pytest.mark.parametrize("where", ["http_error", "answer", "not_json"])
def test_key_is_redacted_before_the_text_is_cut(server, where):
    # The key straddles the 200-character snippet limit: cutting first would leave its first
    # half in the reason, which no longer matches the key and would escape redaction.
    prefix = {"http_error": "upstream said: ", "not_json": "<html>"}.get(
        where, '{"defer": false, "direction": "'
    )
    text = prefix + "x" * (190 - len(prefix)) + SECRET + " and more"  # key at 190..210
    if where == "answer":
        server.answer(text)
    else:
        server.fail(500 if where == "http_error" else 200, text.encode())
    # Not a timing test: a generous timeout keeps a loaded machine from turning it into one.
    reasoner = make_reasoner(server.url, max_retries=0, timeout_s=10.0, connect_timeout_s=10.0)
    proposal = reasoner.propose(OBS)
    assert proposal.defer and "<redacted>" in proposal.reason
    assert SECRET[:6] not in proposal.reason, proposal.reason


def test_failures_are_counted_until_the_vlm_answers_again(server):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        unreachable = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    reasoner = make_reasoner(server.url, max_retries=0)
    server.fail(500)
    server.fail(429, b'{"error": "rate limited"}')
    server.answer("sure! {left, down")
    server.answer(json.dumps(VALID), delay=1.0)  # times out (0.3 s)
    server.answer('{"defer": true, "reason": "unsure"}')  # the model's own deferral: no failure
    reasons = []
    for expected in (1, 2, 3, 4, 0):
        reasons.append(reasoner.propose(OBS).reason)
        assert reasoner.failures_in_a_row == expected, reasons[-1]
    assert "HTTP 500" in reasons[0] and "HTTP 429" in reasons[1]
    assert "not valid JSON" in reasons[2] and "timed out" in reasons[3]
    dead = make_reasoner(unreachable, max_retries=0)
    assert "connection refused" in dead.propose(OBS).reason and dead.failures_in_a_row == 1


def test_failure_warnings_are_rate_limited_and_count_what_they_skipped():
    warnings = FailureWarnings(period_s=5.0)
    level, text = warnings.update(True, "VLM request failed: HTTP 500", now_s=100.0)
    assert level == logging.WARNING and "HTTP 500" in text and "1 in a row" in text
    for t in (100.5, 101.0, 104.9):  # inside the period: quiet
        assert warnings.update(True, "VLM request failed: timed out", now_s=t) is None
    level, text = warnings.update(True, "VLM request failed: timed out", now_s=105.0)
    assert level == logging.WARNING and "timed out" in text
    assert "4 failed proposals since the last report, 5 in a row" in text
    level, text = warnings.update(False, "", now_s=105.1)
    assert level == logging.INFO and "after 5 failed proposals" in text
    assert warnings.update(False, "", now_s=105.2) is None  # recovered once, then quiet
    # A new outage is reported at once, not a period after the last report.
    assert warnings.update(True, "VLM answer rejected", now_s=105.3)[0] == logging.WARNING
    with pytest.raises(ValueError):
        FailureWarnings(period_s=math.nan)
