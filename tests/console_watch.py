"""Watches a page in headless Chromium (Debian `chromium`) through the
DevTools protocol: prints the page's visible text as a JSON line four
times a second, for at most SECONDS; `shot PATH` on stdin saves a
screenshot, `quit` (or end of stdin) stops. The page is never reloaded:
what it shows later, it shows by itself. Chromium's profile goes in
PROFILE, an empty folder the caller made and removes.

Usage: console_watch.py URL SECONDS PROFILE
"""

import base64
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import websocket


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Page:
    def __init__(self, address):
        self.ws = websocket.create_connection(address, timeout=10)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})


def main():
    # The profile folder is the caller's, which removes it.
    url, seconds, profile = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not chromium:
        sys.exit("chromium is missing: install Debian's `chromium` package (.ci/run does)")
    port = free_port()
    browser = subprocess.Popen(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--window-size=1440,1000", f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # Chromium's own temporary files go in the profile folder too.
        env={**os.environ, "TMPDIR": profile})
    try:
        deadline = time.time() + 60
        while True:
            try:
                targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2))
                pages = [it for it in targets if it.get("type") == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                sys.exit("chromium's DevTools did not answer within 60 s")
            time.sleep(0.2)
        page = Page(pages[0]["webSocketDebuggerUrl"])
        page.call("Page.enable")
        page.call("Page.navigate", url=url)
        end = time.time() + seconds
        while time.time() < end:
            result = page.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                               returnByValue=True)
            print(json.dumps({"text": result.get("result", {}).get("value", "")}), flush=True)
            ready, _, _ = select.select([sys.stdin], [], [], 0.25)
            if ready:
                command = sys.stdin.readline()
                if not command or command.strip() == "quit":
                    return
                if command.startswith("shot "):
                    shot = page.call("Page.captureScreenshot", format="png")
                    path = command[5:].strip()
                    # Written aside and renamed: the test waits for the path
                    # to exist and must find the whole image there.
                    with open(path + ".part", "wb") as out:
                        out.write(base64.b64decode(shot["data"]))
                    os.replace(path + ".part", path)
                    print(json.dumps({"shot": path}), flush=True)
    finally:
        browser.terminate()
        try:
            browser.wait(timeout=10)
        except subprocess.TimeoutExpired:
            browser.kill()


if __name__ == "__main__":
    main()
