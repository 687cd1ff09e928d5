"""The status page in headless Chromium (Debian's `chromium`, driven over the DevTools protocol):
it loads with no console error and no outside request, shows the live counts of a ferryd that is
relaying (compared with /metrics read at the same moment), and a screenshot is kept as a test
artifact ($FERRY_TEST_ARTIFACTS, default .build/test-artifacts/status-page.png)."""
import asyncio
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.request

import pytest
import websockets

import turnclient as tc
from conftest import ROOT, free_port, http_get, wait_until
from test_admin_api import metrics, turn_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """Headless Chromium with a DevTools port, and one page's protocol connection."""

    def __init__(self, *flags):
        self.port = free_port()
        self.profile = tempfile.mkdtemp(prefix="ferry-chromium-")
        self.proc = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                      f"--remote-debugging-port={self.port}", f"--user-data-dir={self.profile}",
                                      "--window-size=420,1400", *flags, "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def page():
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as r:
                return next(t["webSocketDebuggerUrl"] for t in json.load(r) if t["type"] == "page")
        self.ws_url = wait_until(page, timeout=30, ignore=(OSError, StopIteration, ValueError))

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)


async def load(ws_url, url, evaluate):
    """Loads `url`; returns (console errors and exceptions, requests made, values of `evaluate`
    (JavaScript expressions) read after the load, a PNG screenshot)."""
    async with websockets.connect(ws_url, max_size=50 * 2 ** 20) as ws:
        next_id = 0
        events = []

        async def call(method, **params):
            nonlocal next_id
            next_id += 1
            me = next_id
            await ws.send(json.dumps({"id": me, "method": method, "params": params}))
            while True:
                m = json.loads(await asyncio.wait_for(ws.recv(), 20))
                if m.get("id") == me:
                    if "error" in m:
                        raise AssertionError(f"{method}: {m['error']}")
                    return m.get("result", {})
                events.append(m)

        for domain in ("Page", "Runtime", "Log", "Network"):
            await call(f"{domain}.enable")
        await call("Page.navigate", url=url)
        while not any(e.get("method") == "Page.loadEventFired" for e in events):
            events.append(json.loads(await asyncio.wait_for(ws.recv(), 20)))
        values = {}
        for name, expression in evaluate.items():
            r = await call("Runtime.evaluate", expression=expression, returnByValue=True)
            values[name] = r["result"].get("value")
        shot = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        errors = [e for e in events if e.get("method") == "Runtime.exceptionThrown"
                  or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
                  or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
        requests = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
        return errors, requests, values, base64.b64decode(shot["data"])


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is installed by scripts/setup.sh test")
def test_status_page_in_chromium_shows_the_live_counts(ferryd_factory):
    f = turn_server(ferryd_factory, extra="status_interval_seconds = 1\n")
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    clients = []
    for _ in range(4):
        c = tc.TurnClient(("127.0.0.1", f.udp), "test", "pass")
        assert c.allocate().ok
        assert c.channel_bind(0x4000, "127.0.0.1", peer.getsockname()[1]).ok
        clients.append(c)
    # Load while the page is read: every client relays ChannelData to the peer.
    stop = threading.Event()

    def relay():
        frame = struct.pack("!HH", 0x4000, 200) + b"z" * 200
        while not stop.is_set():
            for c in clients:
                c.send_raw(frame)
            time.sleep(0.001)
    t = threading.Thread(target=relay, daemon=True)
    t.start()
    # Three samples (one a second): the charts have two points each, the load a value.
    wait_until(lambda: len(json.loads(http_get(f.admin_port, "/v1/status")[1])["history"]["packets_per_second"]) >= 2, timeout=10)
    browser = Browser()
    try:
        url = f"http://127.0.0.1:{f.admin_port}/"
        errors, requests, values, png = asyncio.run(load(browser.ws_url, url, {
            "allocations": "document.querySelector('#allocations b').textContent",
            "title": "document.title",
            "charts": "document.querySelectorAll('svg polyline').length",
            "load": "document.body.innerText.includes(' %')",
            "listeners": "document.body.innerText.includes('turn-udp')",
            "width": "document.documentElement.scrollWidth",
            "inner": "window.innerWidth",
        }))
        m = metrics(f)
        assert errors == [], errors
        assert requests == [url], f"the page loads nothing but itself: {requests}"
        assert values["title"] == "ferryd status" and values["charts"] == 4 and values["listeners"] and values["load"]
        assert int(values["allocations"]) == m["ferry_turn_allocations_active"] == 4
        assert values["width"] <= values["inner"], "readable on a phone: no horizontal scrolling at 420 px"
        assert m['ferry_turn_relayed_packets_total{direction="to_peer"}'] > 0
        out = os.environ.get("FERRY_TEST_ARTIFACTS", os.path.join(ROOT, ".build", "test-artifacts"))
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "status-page.png"), "wb") as fh:
            fh.write(png)
        assert png.startswith(b"\x89PNG") and len(png) > 10000
    finally:
        stop.set()
        t.join(5)
        browser.close()
        for c in clients:
            c.close()
