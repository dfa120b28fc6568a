"""A small Chrome DevTools Protocol client over aiohttp websockets, for the board's browser test.

Starts Debian's ``chromium`` headless with a new empty profile and no network of its own
(``--disable-background-networking`` and friends), connects to its first page over the
DevTools websocket and offers what the test needs: send a command, wait for an event,
evaluate JavaScript, and collect every JavaScript error (exceptions, ``console.error``, failed
resource loads) the page reports.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
         "--window-size=1280,900"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """``async with Browser() as page:`` a headless Chromium page driven over CDP."""

    def __init__(self, executable: str | None = None, timeout: float = 90.0) -> None:
        # Generous: on a loaded 2-core machine chromium and the server share the cores with others.
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise FileNotFoundError("chromium not found")
        self.timeout = timeout
        self.errors: list[str] = []
        self._events: list[dict] = []
        self._waiters: list[tuple[str, asyncio.Future]] = []
        self._pending: dict[int, asyncio.Future] = {}
        self._next = 0

    async def __aenter__(self) -> Browser:
        # the profile may still be written by chromium's helpers while it is removed: never fail on that
        self._profile = tempfile.TemporaryDirectory(prefix="board-chromium-", ignore_cleanup_errors=True)
        # its own process group, so that the renderer and GPU helpers are stopped with it
        self._proc = subprocess.Popen([self.executable, *FLAGS, f"--user-data-dir={self._profile.name}",
                                       "--remote-debugging-port=0", "about:blank"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = Path(self._profile.name) / "DevToolsActivePort"
        for _ in range(int(self.timeout * 10)):
            if port_file.is_file() and len(port_file.read_text().split()) >= 2:
                break
            if self._proc.poll() is not None:
                raise RuntimeError(f"chromium exited with status {self._proc.returncode}")
            await asyncio.sleep(0.1)
        else:
            raise TimeoutError("chromium did not open its DevTools port")
        port = int(port_file.read_text().split()[0])
        self._http = aiohttp.ClientSession()
        page = None
        for _ in range(int(self.timeout * 10)):
            try:   # the port file can appear a moment before the port answers
                async with self._http.get(f"http://127.0.0.1:{port}/json/list") as r:
                    targets = await r.json(content_type=None)
            except (aiohttp.ClientError, OSError):
                targets = []
            page = next((t for t in targets if t.get("type") == "page"), None)
            if page:
                break
            await asyncio.sleep(0.1)
        if page is None:
            raise RuntimeError("chromium has no page target")
        self._ws = await self._http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        for domain in ("Runtime", "Log", "Page"):
            await self.send(f"{domain}.enable")
        return self

    async def __aexit__(self, *exc) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
        await self._http.close()
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)   # helpers left behind by the browser
        self._profile.cleanup()

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
                continue
            self._note(data)

    def _note(self, event: dict) -> None:
        method, params = event.get("method", ""), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            self.errors.append(f"exception: {d.get('text')} {d.get('exception', {}).get('description', '')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append("console.error: " + " ".join(str(a.get("value", a.get("description")))
                                                          for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"log: {entry.get('text')} {entry.get('url', '')}")
        self._events.append(event)
        for name, fut in list(self._waiters):
            if name == method and not fut.done():
                fut.set_result(event)
                self._waiters.remove((name, fut))

    async def send(self, method: str, **params: Any) -> dict:
        self._next += 1
        fut = asyncio.get_running_loop().create_future()
        self._pending[self._next] = fut
        await self._ws.send_str(json.dumps({"id": self._next, "method": method, "params": params}))
        reply = await asyncio.wait_for(fut, self.timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def expect(self, method: str) -> asyncio.Future:
        """A future for the next `method` event (ask before doing what causes it)."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((method, fut))
        return fut

    async def goto(self, url: str) -> None:
        loaded = self.expect("Page.loadEventFired")
        await self.send("Page.navigate", url=url)
        await asyncio.wait_for(loaded, self.timeout)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float | None = None) -> Any:
        """Evaluate `expression` until it is truthy; its value (a DOM node comes back as {}: use !!)."""
        deadline = asyncio.get_running_loop().time() + (timeout or self.timeout)
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"still false after {timeout or self.timeout} s: {expression}")
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path) -> Path:
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path
