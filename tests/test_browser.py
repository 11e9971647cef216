"""A real browser as the peer: headless Chromium (Debian's package) driven by
Playwright, against the live chat server.

- A raw ``new WebSocket(...)`` from a page negotiates permessage-deflate with
  Chromium's own offer and chats.
- The web page the server serves at ``GET /`` (``wsnet/chat/static/index.html``):
  two people chat through it, it survives a server restart (reconnects by
  itself, delivers what was typed meanwhile, shows every message once and in
  order), resumes with ``since`` after a dropped socket, keeps a message the
  server refused as ``unavailable`` and sends it again, opens a direct-message
  room from the member list, shows who is typing, and never turns chat text
  into markup.

``make test`` installs Chromium and Playwright; when the browser is missing these
tests fail loudly rather than skipping, so CI cannot pass without it.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Page,
    WebSocket,
    expect,
    sync_playwright,
)
from support.procs import RedisServer
from support.servers import ServerFactory
from websockets.sync.client import connect as ws_connect

from wsnet.tokens import make_token

pytestmark = pytest.mark.live

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Milliseconds for one step to show up in a page (a tick is 50 ms).
STEP = 5_000
#: ...and for a page to come back after its server or network did: the backoff
#: (full jitter, 0.5 s doubling) may be waiting a few seconds by then.
RECONNECT = 20_000

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

# The displayed messages, in page order: [[sender, text], ...].
READ_MESSAGES = """() => Array.from(
  document.querySelectorAll("#messages li.msg"),
  (li) => [li.querySelector(".from").textContent, li.querySelector(".text").textContent],
)"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium for the module; each chat page gets its own context (its own
    storage, like a second person). A launch failure is an error, not a skip."""
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Socket:
    """One WebSocket a page opened, as Playwright saw it."""

    url: str
    frames: list[str] = field(default_factory=list)

    def query(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.url).query).items()}

    def events(self, index: int) -> list[dict[str, object]]:
        events = json.loads(self.frames[index])
        assert isinstance(events, list), self.frames[index]
        return events


@dataclass
class ChatPage:
    """The chat page in its own browser context."""

    context: BrowserContext
    page: Page
    sockets: list[Socket] = field(default_factory=list)
    #: Script errors and CSP violations: the page must have none.
    problems: list[str] = field(default_factory=list)

    def join(self, name: str, room: str) -> None:
        self.page.fill("#name", name)
        self.page.fill("#room", room)
        self.page.press("#room", "Enter")
        self.expect_state("online")

    def say(self, text: str) -> None:
        self.page.fill("#text", text)
        self.page.press("#text", "Enter")

    def expect_state(self, state: str, timeout: float = STEP) -> None:
        expect(self.page.locator("#status")).to_have_attribute("data-state", state, timeout=timeout)

    def expect_members(self, names: list[str]) -> None:
        expect(self.page.locator("#members li")).to_have_text(names, timeout=STEP)

    def expect_messages(self, log: list[tuple[str, str]], timeout: float = STEP) -> None:
        """The page shows exactly ``log``: these senders and texts, in this order."""
        items = self.page.locator("#messages li.msg")
        expect(items.locator(".text")).to_have_text([t for _, t in log], timeout=timeout)
        expect(items.locator(".from")).to_have_text([n for n, _ in log], timeout=timeout)
        assert self.messages() == log  # exactly, not whitespace-normalised

    def messages(self) -> list[tuple[str, str]]:
        return [(name, text) for name, text in self.page.evaluate(READ_MESSAGES)]

    def position(self) -> dict[str, object]:
        position = self.page.evaluate("window.wsnetChat.position")
        assert isinstance(position, dict), position
        return position

    def on_websocket(self, ws: WebSocket) -> None:
        socket = Socket(ws.url)
        self.sockets.append(socket)
        ws.on("framereceived", lambda payload: socket.frames.append(str(payload)))

    def on_console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Refused to" in message.text:
            self.problems.append(message.text)


class ChatPageFactory(Protocol):
    def __call__(self, port: int, fragment: str = "") -> ChatPage: ...


@pytest.fixture
def chat_page(browser: Browser) -> Iterator[ChatPageFactory]:
    """``chat_page(port, fragment)`` opens the server's page (``/#fragment``) in
    a fresh browser context."""
    opened: list[ChatPage] = []

    def factory(port: int, fragment: str = "") -> ChatPage:
        context = browser.new_context()
        page = context.new_page()
        chat = ChatPage(context, page)
        page.on("websocket", chat.on_websocket)
        page.on("console", chat.on_console)
        page.on("pageerror", lambda error: chat.problems.append(f"page error: {error}"))
        opened.append(chat)
        response = page.goto(f"http://127.0.0.1:{port}/" + (f"#{fragment}" if fragment else ""))
        assert response is not None and response.status == 200
        assert "script-src 'sha256-" in response.headers["content-security-policy"]
        expect(page.locator("#status")).to_have_attribute("data-state", "offline")
        return chat

    yield factory
    try:
        for chat in opened:
            assert not chat.problems, chat.problems
    finally:
        for chat in opened:
            chat.context.close()


def exchange(
    sender: ChatPage, name: str, text: str, log: list[tuple[str, str]], *pages: ChatPage,
) -> None:
    """``sender`` types ``text``; every page then shows ``log`` plus it."""
    sender.say(text)
    log.append((name, text))
    for page in pages:
        page.expect_messages(log)


def test_chromium_chats_through_the_server(
    server_factory: ServerFactory, chat_page: ChatPageFactory,
) -> None:
    server = server_factory()
    origin = chat_page(server.port)  # a page on the server's origin: Chromium lets it connect
    result = json.loads(origin.page.evaluate(SCRIPT, server.url))
    # Chromium's own offer was accepted, with the server's parameters imposed.
    assert result["extensions"].startswith("permessage-deflate")
    assert "server_no_context_takeover" in result["extensions"]
    for who, frames in (("alice", result["a"]), ("bob", result["b"])):
        events = [e for frame in frames for e in frame]
        assert events[0]["type"] == "welcome" and events[0]["name"] == who
        assert events[1]["type"] == "presence" and events[1]["room"] == "lobby"
        messages = [e for e in events if e["type"] == "message"]
        assert [(m["from"], m["text"]) for m in messages] == [
            ("alice", "hello from a real browser"),
        ]
    # Only the script's sockets: the page itself connects once someone joins.
    assert [s.url for s in origin.sockets] == [server.url + "?name=alice", server.url + "?name=bob"]


def test_two_pages_chat_and_ride_out_a_server_restart(
    server_factory: ServerFactory, chat_page: ChatPageFactory,
) -> None:
    server = server_factory()
    port = server.port
    ann, bob = chat_page(port), chat_page(port)
    ann.join("ann", "kitchen")
    bob.join("bob", "kitchen")
    for page in (ann, bob):
        page.expect_members(["ann", "bob"])
    log: list[tuple[str, str]] = []
    exchange(ann, "ann", "hi bob", log, ann, bob)
    exchange(bob, "bob", "hi ann: all well?", log, ann, bob)
    old_epoch = ann.position()["epoch"]
    assert bob.position() == {"epoch": old_epoch, "seq": 2}

    server.terminate_and_wait()
    for page in (ann, bob):
        page.expect_state("reconnecting")
        expect(page.page.locator("#status")).to_contain_text("Reconnecting")
    # Typed while the server is down: queued, shown as pending.
    ann.say("typed while the server was down")
    expect(ann.page.locator("#outbox li .text")).to_have_text(["typed while the server was down"])
    log.append(("ann", "typed while the server was down"))

    server_factory("--port", str(port))
    for page in (ann, bob):
        page.expect_state("online", timeout=RECONNECT)
    for page in (ann, bob):
        page.expect_messages(log)
        page.expect_members(["ann", "bob"])
    expect(ann.page.locator("#outbox li")).to_have_count(0)
    exchange(bob, "bob", "welcome back", log, ann, bob)
    exchange(ann, "ann", "thanks, it was only a restart", log, ann, bob)

    for page in (ann, bob):
        # The restarted room has a new epoch; the page said where it was in the old one.
        position = page.position()
        assert position["seq"] == 3 and position["epoch"] != old_epoch, position
        resumed = [s.query() for s in page.sockets if s.frames][-1]
        assert resumed["since"] == "2" and resumed["epoch"] == old_epoch, resumed
        # ...and was told that numbering restarted.
        notes = page.page.locator("#messages li.system")
        expect(notes).to_have_count(1)
        expect(notes).to_contain_text("no longer in history")
        assert page.messages() == log


def test_a_message_lost_in_a_crash_is_sent_again(
    server_factory: ServerFactory, chat_page: ChatPageFactory,
) -> None:
    server = server_factory()
    port = server.port
    ann, bob = chat_page(port), chat_page(port)
    ann.join("ann", "crash")
    bob.join("bob", "crash")
    log: list[tuple[str, str]] = []
    exchange(ann, "ann", "before the crash", log, ann, bob)
    # Frozen, the server never reads what the page writes; then it dies with it.
    server.process.send_signal(signal.SIGSTOP)
    ann.say("written, never read")
    expect(ann.page.locator("#outbox li .state")).to_have_text(["sending…"])
    server.process.kill()
    server.terminate_and_wait()
    for page in (ann, bob):
        expect(page.page.locator("#status")).not_to_have_attribute("data-state", "online")

    server_factory("--port", str(port))
    log.append(("ann", "written, never read"))
    for page in (ann, bob):
        page.expect_state("online", timeout=RECONNECT)
        page.expect_messages(log)
    expect(ann.page.locator("#outbox li")).to_have_count(0)
    exchange(bob, "bob", "got it", log, ann, bob)


def test_page_resumes_with_since_after_its_socket_drops(
    server_factory: ServerFactory, chat_page: ChatPageFactory,
) -> None:
    server = server_factory()
    ann, bob = chat_page(server.port), chat_page(server.port)
    ann.join("ann", "resume")
    bob.join("bob", "resume")
    ann.expect_members(["ann", "bob"])
    log: list[tuple[str, str]] = []
    exchange(bob, "bob", "one", log, ann, bob)
    exchange(ann, "ann", "two", log, ann, bob)
    before = ann.position()
    assert before["seq"] == 2

    # Ann's network goes (so her reconnects fail until it is back) and her socket
    # is closed under the page; Bob goes on talking meanwhile.
    ann.context.set_offline(True)
    ann.page.evaluate("window.wsnetChat.socket.close()")
    expect(ann.page.locator("#status")).to_have_attribute(
        "data-state", re.compile("^(offline|reconnecting)$"), timeout=STEP,
    )
    bob.expect_members(["bob"])
    for text in ("three", "four", "five"):
        exchange(bob, "bob", text, log, bob)
    ann.context.set_offline(False)
    ann.expect_state("online", timeout=RECONNECT)
    ann.expect_messages(log)

    # The reconnect asked to resume after seq 2 of the same epoch, and its
    # welcome frame replayed exactly what was missed, with no gap.
    resumed = [s for s in ann.sockets if s.frames]
    assert len(resumed) == 2, [s.url for s in ann.sockets]
    assert resumed[1].query()["since"] == "2"
    assert resumed[1].query()["epoch"] == before["epoch"]
    welcome = resumed[1].events(0)
    assert [e["type"] for e in welcome] == ["welcome", "presence", *["message"] * 3], welcome
    assert [e["text"] for e in welcome[2:]] == ["three", "four", "five"]
    expect(ann.page.locator("#messages li.system")).to_have_count(0)

    exchange(ann, "ann", "back again", log, ann, bob)
    bob.expect_members(["ann", "bob"])
    assert ann.position() == {"epoch": before["epoch"], "seq": 6}


def test_message_text_is_text_not_markup(
    server_factory: ServerFactory, chat_page: ChatPageFactory,
) -> None:
    server = server_factory()
    ann, zoe = chat_page(server.port), chat_page(server.port)
    dialogs: list[str] = []

    def refuse(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    for page in (ann, zoe):
        page.page.on("dialog", refuse)
    ann.join("ann", "safe")
    zoe.join("Zoë Lee", "safe")  # names may be any script, with inner spaces
    ann.expect_members(["ann", "Zoë Lee"])
    log: list[tuple[str, str]] = []
    markup = "<img src=x onerror=alert(1)><b>bold</b>"
    exchange(ann, "ann", markup, log, ann, zoe)
    exchange(zoe, "Zoë Lee", "<script>alert(2)</script> & &amp; \"quotes\"", log, ann, zoe)
    for page in (ann, zoe):
        texts = page.page.locator("#messages li.msg .text")
        assert texts.first.text_content() == markup
        assert page.page.locator("img, b, #messages script").count() == 0
    assert dialogs == []


def test_rename_reaches_the_other_page(
    server_factory: ServerFactory, chat_page: ChatPageFactory,
) -> None:
    server = server_factory()
    ann, bob = chat_page(server.port), chat_page(server.port)
    ann.join("ann", "names")
    bob.join("bob", "names")
    bob.expect_members(["ann", "bob"])
    ann.page.fill("#name", "annie")
    expect(ann.page.locator("#join")).to_have_text("Rename")
    ann.page.press("#name", "Enter")
    for page in (ann, bob):
        page.expect_members(["annie", "bob"])
    expect(bob.page.locator("#messages li.system")).to_have_text(["ann is now annie."])
    log: list[tuple[str, str]] = []
    exchange(ann, "annie", "new name, same me", log, ann, bob)
    # The next connection asks for the new name.
    with ann.page.expect_websocket(timeout=RECONNECT) as reconnect:
        ann.page.evaluate("window.wsnetChat.socket.close()")
    assert parse_qs(urlsplit(reconnect.value.url).query)["name"] == ["annie"]
    ann.expect_state("online")
    bob.expect_members(["annie", "bob"])
    exchange(bob, "bob", "still you", log, ann, bob)


def test_a_late_joiner_sees_the_rooms_recent_history(
    server_factory: ServerFactory, chat_page: ChatPageFactory,
) -> None:
    server = server_factory()
    ann = chat_page(server.port)
    ann.join("ann", "history")
    log: list[tuple[str, str]] = []
    exchange(ann, "ann", "said before bob came", log, ann)
    exchange(ann, "ann", "and this too", log, ann)
    bob = chat_page(server.port)
    bob.join("bob", "history")
    bob.expect_messages(log)
    first = bob.sockets[0].query()
    assert first["since"] == "0" and "epoch" not in first, first
    exchange(bob, "bob", "hello ann", log, ann, bob)


def test_pages_on_two_workers_chat_through_redis(
    server_factory: ServerFactory, chat_page: ChatPageFactory, redis_server: RedisServer,
) -> None:
    """With a backplane the join answer comes a Redis round trip after the
    welcome, and the page must wait for it before resending. (Without affinity the
    pages spread over the workers; tests/test_workers.py proves rooms span them.)"""
    server = server_factory("--workers", "2", "--redis", redis_server.url, "--no-affinity")
    pages = [chat_page(server.port) for _ in range(4)]
    names = ["ann", "bob", "cy", "dee"]
    for page, name in zip(pages, names, strict=True):
        page.join(name, "spread")
    for page in pages:
        page.expect_members(sorted(names))
    log: list[tuple[str, str]] = []
    for page, name in zip(pages, names, strict=True):
        exchange(page, name, f"hello from {name}", log, *pages)
    # A dropped socket comes back (to either worker) and resumes with since.
    with pages[0].page.expect_websocket(timeout=RECONNECT):
        pages[0].page.evaluate("window.wsnetChat.socket.close()")
    pages[0].expect_state("online", timeout=RECONNECT)
    exchange(pages[1], "bob", "still there?", log, *pages)
    assert pages[0].messages() == log


def test_a_message_refused_as_unavailable_is_kept_and_sent_once_later(
    server_factory: ServerFactory, chat_page: ChatPageFactory, redis_server: RedisServer,
) -> None:
    """With Redis gone the server answers ``unavailable`` with the message's
    cid; the page keeps the message, says so, and sends it again until the
    backplane is back, and every page then shows it once."""
    server = server_factory("--redis", redis_server.url)
    ann, bob = chat_page(server.port), chat_page(server.port)
    ann.join("ann", "outage")
    bob.join("bob", "outage")
    log: list[tuple[str, str]] = []
    exchange(ann, "ann", "before the outage", log, ann, bob)

    redis_server.stop()
    ann.say("during the outage")
    pending = ann.page.locator("#outbox li .state")
    expect(pending).to_have_text(["not stored yet, trying again…"], timeout=STEP)
    # Refused again on the next attempt, and still kept (not dropped as "Not sent").
    wait_for(lambda: refusals(ann) >= 2, RECONNECT, ann.page)
    expect(pending).to_have_count(1)
    expect(ann.page.locator("#log")).not_to_contain_text("Not sent")

    redis_server.start()
    log.append(("ann", "during the outage"))
    for page in (ann, bob):
        page.expect_messages(log, timeout=RECONNECT)
    expect(ann.page.locator("#outbox li")).to_have_count(0)
    exchange(bob, "bob", "welcome back", log, ann, bob)


def refusals(page: ChatPage) -> int:
    """How many ``unavailable`` errors (for a message: with a cid) the page got."""
    return sum(
        1
        for socket in page.sockets
        for index in range(len(socket.frames))
        for event in socket.events(index)
        if event.get("type") == "error" and event.get("error") == "unavailable"
        and isinstance(event.get("cid"), str)
    )


def wait_for(condition: Callable[[], bool], timeout_ms: float, page: Page) -> None:
    """Let the page run until ``condition`` holds; fail after ``timeout_ms``."""
    deadline = time.monotonic() + timeout_ms / 1000
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        page.wait_for_timeout(50)


def test_a_direct_message_from_the_member_list_and_the_typing_indicator(
    server_factory: ServerFactory, chat_page: ChatPageFactory, tmp_path: Path,
) -> None:
    """With tokens, a member's "Message" button opens the DM room of the two;
    nobody else gets in. Typing shows as "ann is typing…" on the other page and
    clears when her message arrives."""
    secret = tmp_path / "secret"
    secret.write_text("s" * 32)
    server = server_factory("--auth-secret-file", str(secret))
    until = int(time.time()) + 600

    def page_of(name: str) -> ChatPage:
        token = make_token(b"s" * 32, name, until)
        return chat_page(server.port, f"token={token}")

    ann, bob, cy = page_of("ann"), page_of("bob"), page_of("cy")
    ann.join("ann", "team")
    bob.join("bob", "team")
    ann.expect_members(["ann", "bobMessage"])
    bob.page.fill("#text", "typing away")  # typed, not sent
    expect(ann.page.locator("#typing")).to_have_text("bob is typing…", timeout=STEP)
    bob.page.press("#text", "Enter")
    log = [("bob", "typing away")]
    ann.expect_messages(log)
    expect(ann.page.locator("#typing")).to_have_text("")  # cleared by the message

    ann.page.get_by_role("button", name="Message bob directly").click()
    ann.expect_state("online")
    expect(ann.page.locator("#room-title")).to_have_text("Room dm:ann:bob")
    bob.join("bob", "dm:ann:bob")
    dm: list[tuple[str, str]] = []
    exchange(ann, "ann", "just between us", dm, ann, bob)
    exchange(bob, "bob", "agreed", dm, ann, bob)
    cy.page.fill("#name", "cy")
    cy.page.fill("#room", "dm:ann:bob")
    cy.page.press("#room", "Enter")
    expect(cy.page.locator("#messages .system.error")).to_contain_text(
        "you may not join this room", timeout=STEP)
    assert cy.messages() == []


def test_a_presence_storm_reaches_the_member_list_as_diffs(
    server_factory: ServerFactory, chat_page: ChatPageFactory,
) -> None:
    """Twenty clients (the websockets library, a peer of its own) join within a
    second (2 + 3 + ... + 21 = 230 frames as single events, past the 200 of
    presence_storm_frames) and eight leave again: the room switches to
    presence_diff, and the page's member list ends right from the diffs alone."""
    server = server_factory()
    ann = chat_page(server.port)
    ann.join("ann", "storm")
    ann.expect_members(["ann"])
    url = f"ws://127.0.0.1:{server.port}/?room=storm&name="
    with contextlib.ExitStack() as stack:  # closes the rest at the end
        crowd = [stack.enter_context(ws_connect(f"{url}s{i:02}", open_timeout=STEP / 1000))
                 for i in range(20)]
        for client in crowd[:8]:
            client.close()
        ann.expect_members(sorted(["ann", *(f"s{i:02}" for i in range(8, 20))]))
        kinds = {event["type"] for socket in ann.sockets for frame in socket.frames
                 for event in json.loads(frame) if isinstance(event, dict)}
        assert "presence_diff" in kinds, kinds
