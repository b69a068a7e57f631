"""A headless Chromium page driven over the Chrome DevTools Protocol (a websocket; no
webdriver): Debian's `chromium` (`KOCLIP_SEARCH_CHROMIUM` names another)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("KOCLIP_SEARCH_CHROMIUM", "/usr/bin/chromium")
TIMEOUT = 60.0


def require_chromium() -> None:
    """Skip (with the reason) where Chromium or the websocket client is missing."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    pytest.importorskip("websocket", reason="websocket-client is not installed")


class Browser:
    """One headless Chromium page, driven over the DevTools protocol (flattened session)."""

    def __init__(self, profile: Path) -> None:
        import websocket

        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--remote-allow-origins=*",
                "--remote-debugging-port=0",
                "--lang=ko-KR",
                "--window-size=1280,900",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        self._wait(
            lambda: port_file.is_file() and len(port_file.read_text().split()) == 2,
            "chromium to open its DevTools port",
            30,
        )
        port, path = port_file.read_text().split()
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{port}{path}", timeout=TIMEOUT, suppress_origin=True
        )
        self._id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=1280,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One command; waits for its answer, keeping the events that arrive meanwhile."""
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def js(self, expression: str) -> Any:
        """Evaluate in the page (promises awaited) and return the value."""
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_js(self, expression: str, what: str, timeout: float = TIMEOUT) -> Any:
        """Poll a page expression until it is truthy."""
        return self._wait(lambda: self.js(expression), what, timeout)

    def click(self, selector: str) -> None:
        """A real mouse click at the middle of the element (scrolled into view first)."""
        box = self.js(
            f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
            " el.scrollIntoView({block: 'nearest'}); const r = el.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                type=kind,
                x=box[0],
                y=box[1],
                button="left",
                clickCount=1,
            )

    def press_enter(self) -> None:
        """Enter as real key events."""
        self.press("Enter")

    KEYS = {  # key: (code, virtual key code, text typed)
        "Enter": ("Enter", 13, "\r"),
        "Escape": ("Escape", 27, None),
        "ArrowLeft": ("ArrowLeft", 37, None),
        "ArrowRight": ("ArrowRight", 39, None),
        "/": ("Slash", 191, "/"),
    }

    def press(self, key: str) -> None:
        """One key pressed and released, as real key events."""
        code, vk, text = self.KEYS[key]
        common = {"key": key, "code": code, "windowsVirtualKeyCode": vk}
        down = {"text": text} if text else {}
        self.send("Input.dispatchKeyEvent", type="keyDown", **down, **common)
        self.send("Input.dispatchKeyEvent", type="keyUp", **common)

    def compose(self, text: str) -> None:
        """The IME shows `text` as the syllable being composed (compositionstart/update)."""
        self.send(
            "Input.imeSetComposition", text=text, selectionStart=len(text), selectionEnd=len(text)
        )

    def commit(self, text: str) -> None:
        """The IME commits `text` (compositionend), as when the next syllable begins."""
        self.send("Input.insertText", text=text)

    def screenshot(self, path: Path) -> None:
        import base64

        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def errors(self) -> list[str]:
        """Uncaught exceptions and console errors the page reported."""
        out = []
        for e in self.events:
            if e.get("method") == "Runtime.exceptionThrown":
                out.append(json.dumps(e["params"]["exceptionDetails"])[:300])
            elif e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error":
                out.append(json.dumps(e["params"]["args"])[:300])
        return out

    @staticmethod
    def _wait(check: Callable[[], Any], what: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
