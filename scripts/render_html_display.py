"""Render an HTML event display (``sparseseg show ... -o ev.html``) in headless Chromium.

Writes a PNG screenshot of the whole page and exits with status 1 when the page logged a
JavaScript error (an uncaught exception, ``console.error``, a failed resource, a plotly
notification such as "WebGL is not supported") or when the screenshot is blank (almost every
pixel the same colour). Status 2: Chromium could not be run.

Chromium is driven through its DevTools protocol over a pipe (``--remote-debugging-pipe``), so
console messages come with their level and nothing but Chromium and the Python standard
library (plus Pillow or matplotlib to read the PNG back) is needed.

    python scripts/render_html_display.py ev.html -o ev.png [--width 1600] [--colors 128] [--chromium PATH]
"""
from __future__ import annotations

import argparse
import base64
import fcntl
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--hide-scrollbars", "--mute-audio",
    # WebGL (plotly's scattergl / scatter3d) on the CPU: SwiftShader, opted into explicitly
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
]

# JavaScript: the state of every plotly graph on the page, as JSON.
_STATE = """JSON.stringify((() => {
  const graphs = [...document.querySelectorAll('.js-plotly-plot')];
  const notes = [...document.querySelectorAll('.plotly-notifier .notifier-note')].map(n => n.innerText);
  return {graphs: graphs.length, ready: graphs.length > 0 && graphs.every(g => g._fullLayout && g._fullData
            && g.querySelector('.main-svg')), notes: notes,
          height: Math.ceil(document.documentElement.scrollHeight)};
})())"""


class DevTools:
    """A Chromium process and its DevTools connection over a pipe (fds 3 and 4 of the child)."""

    def __init__(self, chromium: str, width: int, height: int, timeout: float) -> None:
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="sparseseg-chromium-")
        cmd_r, self._cmd_w = os.pipe()  # we write commands; Chromium reads fd 3
        self._resp_r, resp_w = os.pipe()  # Chromium writes fd 4; we read

        def child_fds() -> None:  # in the child, before exec: put the pipe ends at 3 and 4
            a = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(resp_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        args = [chromium, *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
                "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=child_fds, close_fds=False)
        os.close(cmd_r)
        os.close(resp_w)
        os.set_blocking(self._resp_r, False)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    # ---- protocol
    def _read_messages(self, wait: float) -> list[dict[str, Any]]:
        import select

        out = []
        ready, _, _ = select.select([self._resp_r], [], [], wait)
        if ready:
            try:
                chunk = os.read(self._resp_r, 1 << 20)
            except BlockingIOError:
                chunk = b""
            if not chunk and self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with status {self.proc.returncode}: {self._stderr_tail()}")
            self._buf += chunk
            while b"\0" in self._buf:
                msg, self._buf = self._buf.split(b"\0", 1)
                out.append(json.loads(msg))
        return out

    def _stderr_tail(self) -> str:
        try:
            self.proc.kill()
            err = self.proc.stderr.read().decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - best effort, for the message only
            err = ""
        return " | ".join(err.strip().splitlines()[-3:])

    def send(self, method: str, params: dict[str, Any] | None = None, session: bool = True) -> dict[str, Any]:
        """Send one command and wait for its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            n = os.write(self._cmd_w, data)
            data = data[n:]
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for m in self._read_messages(0.2):
                if m.get("id") == self._next_id:
                    if "error" in m:
                        raise RuntimeError(f"{method}: {m['error'].get('message')}")
                    return m.get("result", {})
                if "method" in m:
                    self.events.append(m)
        raise TimeoutError(f"{method}: no answer from chromium within {self.timeout:.0f} s")

    def pump(self, seconds: float) -> None:
        """Collect events for ``seconds``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.events.extend(m for m in self._read_messages(min(0.2, max(0.0, end - time.monotonic()))) if "method" in m)

    def evaluate(self, expression: str) -> Any:
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails'].get('text')}")
        return r["result"].get("value")

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.send("Browser.close", session=False)
                except Exception:  # noqa: BLE001 - it is closing anyway
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            for fd in (self._cmd_w, self._resp_r):
                try:
                    os.close(fd)
                except OSError:
                    pass
            shutil.rmtree(self.profile, ignore_errors=True)


def console_errors(events: list[dict[str, Any]]) -> list[str]:
    """The error messages among DevTools events: exceptions, console.error/assert, error log entries."""
    out = []
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            text = d.get("exception", {}).get("description") or d.get("text", "exception")
            out.append(f"uncaught: {text.splitlines()[0]} (line {d.get('lineNumber')})")
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            args = [str(a.get("value", a.get("description", ""))) for a in p.get("args", [])]
            out.append(f"console.{p['type']}: {' '.join(args)[:300]}")
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            entry = p["entry"]
            out.append(f"log ({entry.get('source')}): {entry.get('text', '')[:300]} {entry.get('url', '')}".strip())
    return out


def blank_fraction(png: bytes) -> float:
    """Fraction of pixels that differ clearly (> 24 in a channel) from the most common colour."""
    import numpy as np

    try:
        from PIL import Image

        img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    except ImportError:
        import matplotlib.image as mpimg

        img = (mpimg.imread(io.BytesIO(png), format="png")[..., :3] * 255).astype(np.int16)
    flat = img.reshape(-1, 3)
    packed = (flat[:, 0].astype(np.int32) << 16) | (flat[:, 1].astype(np.int32) << 8) | flat[:, 2].astype(np.int32)
    top = int(np.bincount(packed).argmax())
    mode = np.array([top >> 16, (top >> 8) & 255, top & 255], dtype=np.int16)
    return float((np.abs(flat - mode).max(axis=1) > 24).mean())


def quantize(png: bytes, colors: int) -> bytes:
    """The PNG as a palette image of ``colors`` colours (needs Pillow): a third of the size or less."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=colors, method=Image.Quantize.MAXCOVERAGE)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def render(html: Path, out: Path, chromium: str, width: int, height: int, timeout: float, settle: float,
           min_content: float, colors: int = 0) -> list[str]:
    """Render ``html`` and write ``out``; returns the problems found (empty: success)."""
    dt = DevTools(chromium, width, height, timeout)
    try:
        target = dt.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        dt.session = dt.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]
        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            dt.send(domain)
        dt.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        t0 = time.monotonic()
        dt.send("Page.navigate", {"url": html.resolve().as_uri()})
        problems: list[str] = []
        state: dict[str, Any] = {}
        while time.monotonic() - t0 < timeout:
            dt.pump(0.5)
            state = json.loads(dt.evaluate(_STATE) or "{}")
            if state.get("ready"):
                break
        else:
            problems.append(f"no plotly figure was drawn within {timeout:.0f} s ({state.get('graphs', 0)} graph(s) on the page)")
        load_s = time.monotonic() - t0
        ready = bool(state.get("ready"))
        dt.pump(settle)  # WebGL draws after the SVG is in place
        state = json.loads(dt.evaluate(_STATE) or "{}")
        problems += [f"plotly: {n}" for n in state.get("notes", [])]
        full_h = max(height, int(state.get("height") or height))
        dt.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": full_h, "deviceScaleFactor": 1, "mobile": False})
        dt.pump(settle)
        shot = dt.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        png = base64.b64decode(shot["data"])
        if colors:
            png = quantize(png, colors)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(png)
        content = blank_fraction(png)
        if content < min_content:
            problems.append(f"blank screenshot: only {100 * content:.2f} % of the pixels differ from the background")
        problems = console_errors(dt.events) + problems
        drawn = f"drawn in {load_s:.1f} s" if ready else f"not drawn after {load_s:.0f} s"
        print(f"{html}: {drawn}; screenshot {out} ({width} x {full_h}, {len(png) / 1e3:.0f} kB, "
              f"{100 * content:.1f} % non-background)")
        return problems
    finally:
        dt.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("html", type=Path, help="HTML file written by `sparseseg show ... -o ev.html`")
    ap.add_argument("-o", "--output", type=Path, help="screenshot PNG (default: next to the HTML file, .png)")
    ap.add_argument("--width", type=int, default=1600, help="viewport width in pixels (default 1600)")
    ap.add_argument("--height", type=int, default=1000, help="viewport height; the screenshot takes the whole page")
    ap.add_argument("--chromium", default=None, help="Chromium binary (default: chromium, chromium-browser or google-chrome on PATH)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the page (default 120)")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds to wait after the figure is drawn (default 2)")
    ap.add_argument("--min-content", type=float, default=0.005,
                    help="smallest fraction of non-background pixels of a screenshot that is not blank (default 0.005)")
    ap.add_argument("--colors", type=int, default=0,
                    help="save the screenshot with a palette of this many colours (2-256; needs Pillow), for a small file")
    args = ap.parse_args(argv)
    if args.colors and not 2 <= args.colors <= 256:
        print(f"render_html_display: --colors {args.colors}: must be 2 to 256 (or 0 for full colour)", file=sys.stderr)
        return 2
    if not args.html.is_file():
        print(f"render_html_display: {args.html}: no such file", file=sys.stderr)
        return 2
    chromium = args.chromium or next((c for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)
    if not chromium or not shutil.which(chromium):
        print("render_html_display: no Chromium found (apt-get install chromium, or pass --chromium)", file=sys.stderr)
        return 2
    out = args.output or args.html.with_suffix(".png")
    try:
        problems = render(args.html, out, chromium, args.width, args.height, args.timeout, args.settle, args.min_content,
                          args.colors)
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"render_html_display: {exc}", file=sys.stderr)
        return 2
    for p in problems:
        print(f"render_html_display: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
