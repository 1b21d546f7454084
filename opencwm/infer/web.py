"""The neural debugger as a local web page: the source with the current line, predicted and real locals side by
side, a button per command and editable locals (what CWM's notebook demo shows, without a notebook).

A standard-library HTTP server bound to 127.0.0.1 serves one page and a JSON API (``GET /api/state``, ``POST
/api/command`` with ``{"command": "step"}``, ``"set x = 3"``, ``"break 14"``...). Requests whose ``Host`` is not
this server's loopback address are refused (a page elsewhere cannot reach the debugger by DNS rebinding), and the
page writes model output as text, never as markup.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opencwm.infer.compare import align, first_divergence
from opencwm.infer.completer import CompleterUnavailable
from opencwm.infer.debugger import DebuggerError, NeuralDebugger
from opencwm.infer.repl import format_frame, format_step
from opencwm.infer.truth import TruthSource
from opencwm.trace.codec import resolve_locals

MOVES = {"step": "step", "next": "next", "out": "out", "back": "back", "continue": "continue_", "reset": "reset"}


class DebuggerApp:
    """The session behind the page: commands in, the state as JSON out (one command at a time)."""

    def __init__(self, debugger: NeuralDebugger, truth: TruthSource):
        self.debugger, self.truth = debugger, truth
        self.lock = threading.Lock()
        self.message = ""

    def command(self, text: str) -> dict:
        with self.lock:
            self.message = ""
            words = text.strip().split(None, 1)
            name = words[0] if words else ""
            try:
                if name in MOVES:
                    getattr(self.debugger, MOVES[name])()
                elif name == "set":
                    target, equals, value = (words[1] if len(words) > 1 else "").partition("=")
                    if not equals:
                        raise DebuggerError("usage: set NAME = VALUE")
                    self.debugger.set_local(target.strip(), value)
                elif name in ("break", "clear"):
                    line = int(words[1]) if len(words) > 1 and words[1].strip().isdigit() else None
                    if line is None:
                        raise DebuggerError(f"usage: {name} LINE")
                    if name == "break":
                        self.debugger.set_breakpoint(line)
                    else:
                        self.debugger.clear_breakpoint(line)
                else:
                    raise DebuggerError(f"unknown command {name!r}")
            except (DebuggerError, CompleterUnavailable) as exc:
                self.message = str(exc)
            return self._state()

    def state(self) -> dict:
        with self.lock:
            return self._state()

    def _state(self) -> dict:
        d = self.debugger
        finished = d.finished
        current = d.current
        predicted = {} if finished else d.visible_locals()
        real_locals, real_frame, divergence, truth_note = None, None, None, None
        truth = self.truth.for_session(d)
        if truth.trace is not None:
            rows = align(d.steps[: truth.upto], truth.trace.frames, finished=finished)
            first = first_divergence(rows)
            if first is not None:
                divergence = {"step": first.index, "field": first.verdict}
            index = len(d.steps) - 1
            if index < len(rows) and rows[index].real is not None and rows[index].real_index is not None:
                real_frame = format_frame(rows[index].real)
                real_locals = _scope_locals(truth.trace.frames, rows[index].real_index)
        truth_note = truth.reason
        return {
            "source": d.source.split("\n"),
            "line": None if finished or current.frame is None else current.frame.lineno,
            "finished": finished,
            "steps": [format_step(i, step) for i, step in enumerate(d.steps)],
            "event": current.event,
            "error": current.error,
            "predicted_locals": predicted,
            "real_locals": real_locals,
            "real_frame": real_frame,
            "divergence": divergence,
            "truth_call": truth.call,
            "truth_note": truth_note,
            "breakpoints": sorted(d.session.breakpoints),
            "message": self.message,
        }


def _scope_locals(frames, index: int) -> dict:
    """The real locals at frame ``index`` (at a return, those of the scope it closes)."""
    resolved = resolve_locals(frames[: index + 1])
    for i in range(index, -1, -1):
        if resolved[i] is not None:
            return resolved[i]
    return {}


def make_server(app: DebuggerApp, port: int = 0) -> ThreadingHTTPServer:
    """The page's server on 127.0.0.1 (``port`` 0: any free one); ``serve_forever`` runs it."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # no access log on the terminal
            pass

        def _allowed(self) -> bool:
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
            if host not in ("127.0.0.1", "localhost"):
                self.send_error(403, "this debugger answers on 127.0.0.1 only")
                return False
            return True

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if not self._allowed():
                return
            if self.path == "/":
                self._send(200, PAGE.encode(), "text/html; charset=utf-8")
            elif self.path == "/api/state":
                self._send(200, json.dumps(app.state()).encode(), "application/json")
            else:
                self.send_error(404)

        def do_POST(self) -> None:
            if not self._allowed():
                return
            if self.path != "/api/command":
                self.send_error(404)
                return
            try:
                length = min(int(self.headers.get("Content-Length") or 0), 1 << 16)
                command = json.loads(self.rfile.read(length) or b"{}").get("command", "")
                if not isinstance(command, str):
                    raise ValueError
            except ValueError:
                self.send_error(400, 'expected {"command": "..."}')
                return
            self._send(200, json.dumps(app.command(command)).encode(), "application/json")

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def serve(debugger: NeuralDebugger, truth: TruthSource, *, port: int = 8765) -> int:
    """Serve the page until Ctrl-C; ``OSError`` when the port cannot be bound."""
    server = make_server(DebuggerApp(debugger, truth), port)
    print(f"neural debugger at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C ends it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("", file=sys.stderr)
    finally:
        server.server_close()
    return 0


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>opencwm neural debugger</title>
<style>
body { font-family: sans-serif; margin: 1em; }
#source { font-family: monospace; white-space: pre; border: 1px solid #ccc; padding: .5em; max-width: 64ch;
  overflow-x: auto; }
#side { min-width: 420px; }
.line { cursor: pointer; } .current { background: #ffe58a; } .bp { color: #b00; font-weight: bold; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 2px 6px; font-family: monospace; }
.diff { background: #f8c4c4; } #steps { font-family: monospace; white-space: pre; font-size: 90%; }
#message { color: #b00; } .cols { display: flex; gap: 2em; align-items: flex-start; }
</style></head><body>
<h3>opencwm neural debugger</h3>
<div>
<button id="step">step</button> <button id="next">next</button> <button id="out">out</button>
<button id="back">back</button> <button id="continue">continue</button> <button id="reset">reset</button>
<span id="status"></span> <span id="message"></span>
</div>
<div class="cols">
<div><p>source (click a line number for a breakpoint)</p><div id="source"></div></div>
<div id="side"><p>locals: predicted (edit a value and press set) and real</p>
<table id="locals"><thead><tr><th>name</th><th>predicted</th><th></th><th>real</th></tr></thead><tbody></tbody></table>
<p id="real"></p><p id="truth"></p></div>
</div>
<p>frames</p><div id="steps"></div>
<script>
function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls; return e; }
async function send(command) {
  const r = await fetch('/api/command', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                          body: JSON.stringify({command})});
  render(await r.json());
}
function render(s) {
  const src = document.getElementById('source'); src.replaceChildren();
  s.source.forEach((text, i) => {
    const n = i + 1, bp = s.breakpoints.includes(n);
    const row = el('div', undefined, 'line' + (n === s.line ? ' current' : ''));
    row.id = 'line-' + n;
    const num = el('span', String(n).padStart(4) + (bp ? ' B ' : '   '), bp ? 'bp' : '');
    num.onclick = () => send((bp ? 'clear ' : 'break ') + n);
    row.append(num, el('span', (n === s.line ? '-> ' : '   ') + text));
    src.append(row);
  });
  const body = document.querySelector('#locals tbody'); body.replaceChildren();
  const names = new Set([...Object.keys(s.predicted_locals || {}), ...Object.keys(s.real_locals || {})]);
  names.forEach(name => {
    const p = (s.predicted_locals || {})[name], r = (s.real_locals || {})[name];
    const tr = el('tr', undefined, (s.real_locals && p !== r) ? 'diff' : '');
    const input = el('input'); input.value = p === undefined ? '' : p; input.name = name;
    const button = el('button', 'set'); button.onclick = () => send('set ' + name + ' = ' + input.value);
    const cell = el('td'); cell.append(input);
    const setCell = el('td'); setCell.append(button);
    tr.append(el('td', name), cell, setCell, el('td', r === undefined ? (s.real_locals ? '-' : '') : r));
    body.append(tr);
  });
  document.getElementById('status').textContent = s.finished ? 'the model ended the trace' :
      (s.event ? s.event + ' frame' : 'malformed frame') + (s.line ? ' at line ' + s.line : '');
  document.getElementById('message').textContent = s.message || s.error || '';
  document.getElementById('real').textContent = s.real_frame ? 'real frame: ' + s.real_frame : '';
  document.getElementById('truth').textContent = (s.truth_call ? 'real trace of ' + s.truth_call + '. ' : '') +
      (s.divergence ? 'first divergence at frame ' + s.divergence.step + ': ' + s.divergence.field :
       'no divergence so far') + (s.truth_note ? ' (' + s.truth_note + ')' : '');
  document.getElementById('steps').textContent = s.steps.join('\\n');
}
['step', 'next', 'out', 'back', 'continue', 'reset'].forEach(c =>
  document.getElementById(c).onclick = () => send(c));
fetch('/api/state').then(r => r.json()).then(render);
</script></body></html>
"""
