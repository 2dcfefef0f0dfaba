"""A page opened in headless Chromium, driven over the Chrome DevTools Protocol: no Python
packages, two pipes.

Chromium started with ``--remote-debugging-pipe`` reads protocol commands on its fd 3 and writes
responses and events on its fd 4, each message a JSON object ended by a NUL byte. ``Page`` opens
one tab (``Target.createTarget``, ``Target.attachToTarget`` with ``flatten``), records console
errors, uncaught exceptions and error log entries (failed loads included), and evaluates
JavaScript or takes screenshots in it. Debian's package is ``chromium-headless-shell``.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import pathlib
import select
import shutil
import subprocess
import sys
import tempfile
import time

PACKAGE = "chromium-headless-shell"
EXECUTABLES = ("chromium-headless-shell", "chromium", "chromium-browser")


def find_browser() -> str | None:
    """The first ``EXECUTABLES`` entry on the PATH, or None."""
    return next((path for name in EXECUTABLES if (path := shutil.which(name))), None)


_TRAMPOLINE = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
    "os.close(int(sys.argv[1])); os.close(int(sys.argv[2])); os.execvp(sys.argv[3], sys.argv[3:])"
)


def _above_4(fd: int) -> int:
    """``fd`` moved to a descriptor >= 10, clear of the 3 and 4 the browser gets."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Page:
    """One headless Chromium tab showing ``path``; use as a context manager (the browser is
    ended on exit)."""

    def __init__(self, path, width: int = 1200, height: int = 900, timeout: float = 60.0):
        executable = find_browser()
        if executable is None:
            raise FileNotFoundError(f"no headless Chromium on the PATH: install Debian's {PACKAGE}")
        self.timeout, self.events, self._next_id, self._buffer = timeout, [], 0, b""
        commands_read, self._commands = (_above_4(fd) for fd in os.pipe())
        self._replies, replies_write = (_above_4(fd) for fd in os.pipe())
        self._profile = tempfile.TemporaryDirectory(prefix="explain-chromium-", ignore_cleanup_errors=True)

        # A small Python trampoline gives the browser its protocol descriptors (commands on 3,
        # replies on 4); a preexec_fn would fork this multithreaded (JAX) process instead.
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _TRAMPOLINE,
                str(commands_read),
                str(replies_write),
                executable,
                "--headless",
                "--remote-debugging-pipe",
                "--no-sandbox",  # root in containers and CI
                "--disable-gpu",
                "--no-first-run",
                f"--user-data-dir={self._profile.name}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            pass_fds=(commands_read, replies_write),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(commands_read)
        os.close(replies_write)
        try:
            target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            self._session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                self.send(f"{domain}.enable", session=True)
            self.send("Page.navigate", {"url": pathlib.Path(path).resolve().as_uri()}, session=True)
            self._wait_for("Page.loadEventFired")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Page:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """End the browser (``Browser.close``, killed if it lingers) and close the pipes."""
        try:
            os.write(self._commands, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self._process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self._process.kill()
            self._process.wait()
        for fd in (self._commands, self._replies):
            os.close(fd)
        self._profile.cleanup()

    def _message(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._replies], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self._replies, 1 << 20) if ready else b""
            if not chunk:
                raise TimeoutError(f"headless Chromium sent nothing for {self.timeout:g} s or exited")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: bool = False) -> dict:
        """The result of protocol command ``method``; events read meanwhile go to ``events``."""
        self._next_id += 1
        command = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            command["sessionId"] = self._session
        os.write(self._commands, json.dumps(command).encode() + b"\0")
        while True:
            message = self._message()
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error'].get('message')}")
                return message.get("result", {})
            self.events.append(message)

    def _wait_for(self, event: str) -> None:
        while not any(e.get("method") == event for e in self.events):
            self.events.append(self._message())

    def evaluate(self, expression: str):
        """The value of JavaScript ``expression`` in the page (JSON-serialisable values)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen so far, as text."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails'].get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(f"console.{params['type']}: {[a.get('value') for a in params.get('args', [])]}")
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}".strip())
        return found

    def screenshot(self, selector: str) -> bytes:
        """PNG of the element ``selector`` (scrolled into view first), at its full size."""
        box = self.evaluate(
            f"(function(){{var e=document.querySelector({json.dumps(selector)}); e.scrollIntoView();"
            "var r=e.getBoundingClientRect();"
            "return [r.left+window.scrollX, r.top+window.scrollY, r.width, r.height];})()"
        )
        clip = dict(zip(("x", "y", "width", "height"), box), scale=1)
        data = self.send(
            "Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True}, session=True
        )["data"]
        return base64.b64decode(data)


SET_SLIDERS = (
    "document.querySelectorAll('.slider input').forEach(function(r){"
    "r.value=Math.floor(r.max/2); r.dispatchEvent(new Event('input'));})"
)


def screenshot_sections(page_path, folder) -> list[pathlib.Path]:
    """Open ``page_path``, set every slider to its middle frame, and save one PNG per
    ``<section>`` as ``folder/NN_<id>.png``; raises ``RuntimeError`` on any page error."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with Page(page_path) as page:
        page.evaluate(SET_SLIDERS)
        saved = []
        for i, section in enumerate(page.evaluate("Array.from(document.querySelectorAll('section')).map(s => s.id)")):
            path = folder / f"{i + 1:02d}_{section}.png"
            path.write_bytes(page.screenshot(f"section#{section}"))
            saved.append(path)
        if page.errors():
            raise RuntimeError(f"{page_path}: " + "; ".join(page.errors()))
    return saved
