"""A real browser as the peer: headless Chromium (Debian's package) driven by
Playwright opens ``new WebSocket(...)`` against the live chat server, negotiates
permessage-deflate with its own offer, and chats.

``make test`` installs Chromium and Playwright; when the browser is missing this
test fails loudly rather than skipping, so CI cannot pass without it.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import ServerFactory
from playwright.sync_api import sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Runs in the page: two sockets; one sends plain text, both must see it. Resolves
# with what each received and the negotiated extensions.
SCRIPT = """
async (url) => {
  const open = (name) => new Promise((resolve, reject) => {
    const ws = new WebSocket(url + "?name=" + name);
    const frames = [];
    ws.onmessage = (e) => frames.push(JSON.parse(e.data));
    ws.onopen = () => resolve({ws, frames});
    ws.onerror = () => reject(new Error("websocket error"));
  });
  const a = await open("alice");
  const b = await open("bob");
  const seen = (c) => c.frames.flat().some((e) => e.type === "message");
  a.ws.send("hello from a real browser");
  const deadline = Date.now() + 5000;
  while (!(seen(a) && seen(b)) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
  const result = {a: a.frames, b: b.frames, extensions: a.ws.extensions};
  a.ws.close(1000); b.ws.close(1000);
  return JSON.stringify(result);
}
"""


class _BlankPage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>wsnet browser test</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def page_origin() -> Iterator[str]:
    """A page on 127.0.0.1: Chromium refuses local connections from about:blank
    (its local network access checks), as it would from a public site."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _BlankPage)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_chromium_chats_through_the_server(server_factory: ServerFactory) -> None:
    server = server_factory()
    with page_origin() as origin, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.goto(origin)
            result = json.loads(page.evaluate(SCRIPT, server.url))
        finally:
            browser.close()
    # Chromium's own offer was accepted, with the server's parameters imposed.
    assert result["extensions"].startswith("permessage-deflate")
    assert "server_no_context_takeover" in result["extensions"]
    for who, frames in (("alice", result["a"]), ("bob", result["b"])):
        events = [e for frame in frames for e in frame]
        assert events[0]["type"] == "welcome" and events[0]["name"] == who
        messages = [e for e in events if e["type"] == "message"]
        assert [(m["from"], m["text"]) for m in messages] == [
            ("alice", "hello from a real browser"),
        ]
