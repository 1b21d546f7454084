"""An OpenAI-compatible chat endpoint for tests: it answers with scripted assistant turns in order (then submits)
and records every request, so the real ``openai`` client and the CLI talk to a real HTTP server on loopback."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import ClassVar

SUBMIT = "<tool: submit>\n\n</tool>"


class ScriptedChat(BaseHTTPRequestHandler):
    replies: ClassVar[list[str]] = []
    requests: ClassVar[list[dict]] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "body": body})
        count = len(type(self).requests)
        text = type(self).replies[count - 1] if count <= len(type(self).replies) else SUBMIT
        payload = json.dumps({
            "id": f"chatcmpl-{count}", "object": "chat.completion", "created": 0,
            "model": body["model"], "choices": [{"index": 0, "finish_reason": "stop",
                                                 "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass
