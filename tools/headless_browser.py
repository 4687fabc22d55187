"""Headless Chromium driven through its DevTools protocol: the explorer pages' browser tests,
their benchmark (benchmarks/bench_explorer_page.py) and the README's screenshot
(make_explorer_screenshot.py) use it. A module of the tools, not a script, and not part of
hcformer, which never opens a browser: the scripts import it with tools/ on ``sys.path``.

The protocol is JSON messages over one websocket: a command is ``{"id", "method", "params"}``
and gets a reply with the same id; everything else that arrives is an event (a console message,
an uncaught exception). That is all that is needed here (load a page, move the mouse, press a
key, evaluate an expression, take a screenshot), so no WebDriver sits in between: Chromium from
the Debian packages and the small ``websocket-client`` from PyPI, both installed by
scripts/setup_browser.sh (``make test-browser``). Neither is a dependency of the library: this
module imports websocket-client only when a browser is started.
"""
import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

__all__ = ["Browser", "find_chromium"]

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> Optional[str]:
    """The Chromium executable: $CHROMIUM if set (None if it names no executable), else the
    first of CHROMIUM_NAMES on the PATH; None if there is none."""
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"])
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


class Browser:
    """One headless Chromium with one tab. Use as a context manager: the process and its
    profile directory are removed on exit."""

    def __init__(self, executable: Optional[str], width: int = 1280, height: int = 900, timeout: float = 30.0):
        if not executable or not shutil.which(executable):
            raise FileNotFoundError(
                f"Chromium executable {executable!r} not found: run scripts/setup_browser.sh, or set $CHROMIUM"
            )
        try:
            import websocket  # websocket-client
        except ImportError as e:
            raise ImportError(
                "driving Chromium needs websocket-client: run scripts/setup_browser.sh (or pip install websocket-client)"
            ) from e

        self.timeout = timeout
        self.events: List[Dict] = []
        self._ids = itertools.count(1)
        self._profile = tempfile.mkdtemp(prefix="hcformer-chromium-")
        # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start;
        # the pages are our own files. Port 0: Chromium picks a free port and writes it down.
        self._process = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--disable-background-networking", "--remote-debugging-port=0",
             f"--user-data-dir={self._profile}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            port = self._wait_for_port()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as reply:
                tabs = [t for t in json.load(reply) if t["type"] == "page"]
            self._socket = websocket.create_connection(
                tabs[0]["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True
            )
            for domain in ("Page", "Runtime", "Log"):
                self.send(f"{domain}.enable")
            self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                      mobile=False)
        except BaseException:
            self.close()
            raise

    def _wait_for_port(self) -> int:
        active_port = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"Chromium exited with status {self._process.returncode} at start")
            if active_port.exists() and active_port.read_text().strip():
                return int(active_port.read_text().split()[0])
            time.sleep(0.05)
        raise TimeoutError(f"Chromium did not open its DevTools port within {self.timeout} s")

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        socket = getattr(self, "_socket", None)
        if socket is not None:
            socket.close()
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    # -------------------------------------------------------------------- protocol
    def send(self, method: str, **params) -> Dict:
        """Run one command; return its result. Events that arrive meanwhile go to ``events``."""
        command_id = next(self._ids)
        self._socket.send(json.dumps({"id": command_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv())
            if message.get("id") == command_id:
                if "error" in message:
                    raise RuntimeError(f"{method} failed: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    # -------------------------------------------------------------------- what a user does
    def open(self, path: Path, ready: str = "document.body && document.body.dataset.ready === 'true'") -> float:
        """Load a file and wait until ``ready`` is true; return the seconds it took (from the
        navigation command to the first poll, every 10 ms, that finds it true)."""
        start = time.perf_counter()
        self.send("Page.navigate", url=Path(path).resolve().as_uri())
        deadline = time.monotonic() + self.timeout
        while not self.evaluate(ready):
            if self.console_errors():  # the page failed: no point waiting for the timeout
                raise RuntimeError(f"{path} reported errors while loading: {self.console_errors()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} was not ready within {self.timeout} s; console: {self.console_errors()}")
            time.sleep(0.01)
        return time.perf_counter() - start

    def move_mouse(self, x: float, y: float) -> None:
        """Move the mouse to (x, y) CSS pixels of the viewport."""
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)

    def press(self, key: str, code: str, key_code: int) -> None:
        """Press and release a key (e.g. "ArrowRight", "ArrowRight", 39) in the focused element."""
        for kind in ("rawKeyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", type=kind, key=key, code=code, windowsVirtualKeyCode=key_code)

    def screenshot(self) -> bytes:
        """PNG of the viewport."""
        return base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])

    def console_errors(self) -> List[str]:
        """Errors the page reported so far: uncaught exceptions, console.error, failed loads."""
        errors = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                errors.append(details.get("exception", {}).get("description") or details.get("text", ""))
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                errors.append(params["entry"].get("text", ""))
        return errors
