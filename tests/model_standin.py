"""A local stand-in for the Anthropic Messages API, so the real `claude -p` can run offline.

Why: the plugin's skills are only proven when the real Claude Code client expands them,
substitutes the plugin paths, asks for permission and runs the Bash calls they prescribe.
A model would make that flaky and need a key; this server answers from a script instead.

Protocol (claude-code-plugin.md §10.2): `POST /v1/messages` answers with SSE frames when
`stream` is true (one JSON message otherwise); `POST /v1/messages/count_tokens` answers
`{"input_tokens": n}`; anything else 404. Every request body is appended to the log as one
JSON line, so tests can assert on what Claude Code sent (skill expansion, hook context,
tool results).

A script is a callable `(request_body) -> Reply`. Two are provided:
  marker_script   a `RUNBASH:<cmd>` marker in the last user turn runs that command
  VastRunScript   follows the vast-run skill: reads the launcher path and the command
                  templates out of the skill text Claude Code sent, fills them in, and asks
                  for one Bash call per step, each after the previous tool_result

Usage (manual experiments): python tests/model_standin.py [--log FILE]   (prints its URL)
"""
from __future__ import annotations

import argparse
import json
import re
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Reply:
    """What the stand-in answers: plain text, or one Bash tool call."""

    text: str = ""
    bash: str = ""
    description: str = ""


Script = Callable[[dict], Reply]


# ----- reading a request ---------------------------------------------------------------------

def blocks(message: dict) -> list[dict]:
    """A message's content as blocks (Claude Code sends a string or a list)."""
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or [] if isinstance(b, dict)]


def text_of(block: dict) -> str:
    """The text in a block, including a tool_result's content."""
    if block.get("type") == "tool_result":
        inner = block.get("content")
        return inner if isinstance(inner, str) else "".join(text_of(b) for b in inner or [])
    return str(block.get("text", ""))


def conversation_text(body: dict) -> str:
    """Everything the model would read: system prompt and every message."""
    system = body.get("system")
    parts = [system if isinstance(system, str) else "".join(text_of(b) for b in system or [])]
    parts += [text_of(b) for m in body.get("messages", []) for b in blocks(m)]
    return "\n".join(parts)


def last_user_turn(body: dict) -> dict:
    """The last user message; `role: system` items inside `messages` are skipped (§10.2)."""
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    return users[-1] if users else {}


def tool_results(body: dict) -> list[dict]:
    """Every tool_result block so far, oldest first."""
    return [b for m in body.get("messages", []) if m.get("role") == "user"
            for b in blocks(m) if b.get("type") == "tool_result"]


def offers_bash(body: dict) -> bool:
    """Conversation turns carry the tool list; side requests (titles, quotas) do not."""
    return any(t.get("name") == "Bash" for t in body.get("tools") or [])


# ----- scripts -------------------------------------------------------------------------------

def marker_script(body: dict) -> Reply:
    """`RUNBASH:<cmd>` in the last user turn asks for that Bash call; anything else gets text."""
    last = last_user_turn(body)
    if not offers_bash(body) or any(b.get("type") == "tool_result" for b in blocks(last)):
        return Reply(text="done")
    found = re.search(r"RUNBASH:(.+)", "\n".join(text_of(b) for b in blocks(last)))
    return Reply(bash=found.group(1).strip(), description="scripted") if found else Reply(text="ok")


class VastRunScript:
    """Plays a model that follows the vast-run skill step by step.

    The launcher path and each step's command line are taken from the skill text that
    Claude Code put into the conversation (after substituting ${CLAUDE_PLUGIN_ROOT}), so
    the test fails when the skill prescribes a command the scripts do not accept. Step
    templates are code spans `"<path>/scripts/vc" <sub> …`: the first one per subcommand, or
    for a step "sub:word" the first whose arguments hold `--word`.
    Placeholders in angle brackets are filled from `values`, `<offer_id>` from the offers
    step's JSON. A failed step (`"ok":false` or an error tool_result) ends the session
    with a text reply naming it, so a test sees where it broke.
    """

    STEP_RE = re.compile(r'`"(/[^"`]*/scripts/vc)" ([a-z]+)([^`]*)`')

    def __init__(self, steps: list[str], values: dict[str, str], sandbox: bool = True):
        self.steps, self.values, self.sandbox = steps, values, sandbox
        self.issued: list[str] = []

    def __call__(self, body: dict) -> Reply:
        if not offers_bash(body):
            return Reply(text="vasticlaude")
        results = tool_results(body)
        if results and self._failed(results[-1]):
            return Reply(text=f"STOPPED after {self.steps[len(results) - 1]}: {text_of(results[-1])[:300]}")
        if len(results) >= len(self.steps):
            return Reply(text="All steps done; the instance is destroyed.")
        command = self.command(body, self.steps[len(results)], results)
        self.issued.append(command)
        return Reply(bash=command, description=f"vasticlaude {self.steps[len(results)]}")

    def command(self, body: dict, step: str, results: list[dict]) -> str:
        """The skill's command line for `step` ("status", or "status:wait" for the one with --wait)."""
        sub, _, variant = step.partition(":")
        choices = [t for t in self.templates(conversation_text(body)) if t[1] == sub
                   and (not variant or f"--{variant}" in t[2])]
        if not choices:
            raise LookupError(f"the skill text has no command for {step!r}")
        path, _, args = choices[0]
        values = {**self.values, "offer_id": self._offer_id(results)}
        filled = re.sub(r"<([a-z_]+)>", lambda m: values.get(m.group(1), m.group(0)), args).strip()
        target = " --sandbox" if self.sandbox and sub not in ("report", "cost") else ""
        return f'"{path}" {sub}{target} {filled}'.rstrip()

    @classmethod
    def templates(cls, text: str) -> list[tuple[str, str, str]]:
        """(launcher path, subcommand, arguments) of every launcher call in code spans, in order."""
        return [(m.group(1), m.group(2), m.group(3)) for m in cls.STEP_RE.finditer(text)]

    @staticmethod
    def _failed(result: dict) -> bool:
        return bool(result.get("is_error")) or '"ok":false' in text_of(result)

    @staticmethod
    def _offer_id(results: list[dict]) -> str:
        for result in results:
            found = re.search(r'"offer_id":(\d+)', text_of(result))
            if found:
                return found.group(1)
        return "<offer_id>"


# ----- the server ----------------------------------------------------------------------------

def sse_frames(reply: Reply, model: str) -> list[tuple[str, dict]]:
    """The event sequence of §10.2 for a text reply or a Bash tool_use."""
    message = {"id": f"msg_{uuid.uuid4().hex[:20]}", "type": "message", "role": "assistant", "model": model,
               "content": [], "stop_reason": None, "stop_sequence": None,
               "usage": {"input_tokens": 10, "output_tokens": 1}}
    if reply.bash:
        start = {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:20]}", "name": "Bash", "input": {}}
        payload = json.dumps({"command": reply.bash, "description": reply.description or "run"})
        delta, stop = {"type": "input_json_delta", "partial_json": payload}, "tool_use"
    else:
        start, delta, stop = {"type": "text", "text": ""}, {"type": "text_delta", "text": reply.text}, "end_turn"
    return [("message_start", {"type": "message_start", "message": message}),
            ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": start}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                               "usage": {"output_tokens": 5}}),
            ("message_stop", {"type": "message_stop"})]


def whole_message(reply: Reply, model: str) -> dict:
    """The non-streaming answer: message_start's message plus content and stop_reason."""
    frames = dict(sse_frames(reply, model))
    message = dict(frames["message_start"]["message"])
    block = dict(frames["content_block_start"]["content_block"])
    if reply.bash:
        block["input"] = json.loads(frames["content_block_delta"]["delta"]["partial_json"])
    else:
        block["text"] = reply.text
    message.update(content=[block], stop_reason=frames["message_delta"]["delta"]["stop_reason"])
    return message


class StandIn:
    """The HTTP server on 127.0.0.1 (free port), in a daemon thread."""

    def __init__(self, script: Script, log: Path):
        self.script, self.log, self.errors = script, log, []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "StandIn":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def requests(self) -> list[dict]:
        """Every logged request body, oldest first."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def answer(self, body: dict) -> Reply:
        with self._lock:
            with open(self.log, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(body) + "\n")
            try:
                return self.script(body)
            except Exception as err:  # noqa: BLE001 — a broken script must end the session, not hang it
                self.errors.append(repr(err))
                return Reply(text=f"STAND-IN ERROR: {err!r}")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet: the JSON log is the record
                pass

            def do_GET(self) -> None:
                self._send(404, {"type": "error", "error": {"type": "not_found_error", "message": "stand-in"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                path = self.path.split("?")[0]
                if path.endswith("/count_tokens"):
                    return self._send(200, {"input_tokens": max(1, len(json.dumps(body)) // 4)})
                if not path.endswith("/v1/messages"):
                    return self.do_GET()
                reply = standin.answer(body)
                model = body.get("model", "claude-standin")
                if body.get("stream"):
                    return self._stream(sse_frames(reply, model))
                return self._send(200, whole_message(reply, model))

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, frames: list[tuple[str, dict]]) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.end_headers()
                for event, data in frames:
                    self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()
                self.close_connection = True

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", default="standin-requests.jsonl", help="where request bodies go (JSON lines)")
    args = parser.parse_args()
    standin = StandIn(marker_script, Path(args.log)).start()
    print(standin.url, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
