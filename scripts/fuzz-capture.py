#!/usr/bin/env python3
"""Seeds the fuzz corpora from the traffic the integration tests produce: runs a part of the
integration suite with tshark capturing loopback, then cuts what clients sent in plaintext into
inputs for the targets it fits: UDP STUN datagrams (stun), TCP TURN streams (framing), HTTP
request heads (http-head), WebSocket client frames (websocket) and the signaling messages inside
them (json).
Writes up to --per-target files named cap-<hash> into Tests/FerryFuzzTests/Corpus/TARGET.
Needs root (capture) and tshark. Not part of the tests; rerun when the protocol changes.
"""
import argparse
import hashlib
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "Tests", "FerryFuzzTests", "Corpus")
COOKIE = b"\x21\x12\xa4\x42"


def tshark(*args):
    return subprocess.run(["tshark", *args], capture_output=True, text=True, check=True).stdout


def unmask_frames(data):
    """WebSocket client frames → (raw frames, unmasked text payloads)."""
    frames, texts, i = b"", [], 0
    while i + 2 <= len(data):
        b0, b1 = data[i], data[i + 1]
        n, j = b1 & 0x7F, i + 2
        if n == 126:
            n, j = struct.unpack("!H", data[j:j + 2])[0], j + 2
        elif n == 127:
            n, j = struct.unpack("!Q", data[j:j + 8])[0], j + 8
        if not b1 & 0x80 or j + 4 + n > len(data):
            break
        key, payload = data[j:j + 4], data[j + 4:j + 4 + n]
        frames += data[i:j + 4 + n]
        if b0 & 0x0F == 1:
            texts.append(bytes(c ^ key[k % 4] for k, c in enumerate(payload)))
        i = j + 4 + n
    return frames, texts


def classify(stream, out):
    """One client→server byte stream (plaintext)."""
    if not stream:
        return
    end = stream.find(b"\r\n\r\n")
    if stream[:1].isupper() and end > 0:  # an HTTP method, as the sniffer decides
        out["http-head"].append(b"\x00" + stream[:end + 4])
        if b"upgrade: websocket" in stream[:end].lower():
            frames, texts = unmask_frames(stream[end + 4:])
            if frames:
                out["websocket"].append(b"\xff" + frames[:4096])
            out["json"].extend(texts)
    elif stream[0] & 0xC0 == 0 and stream[4:8] == COOKIE:
        out["framing"].append(b"\xff" + stream[:4096])


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tests", nargs="*", default=["Tests/integration/test_turn.py", "Tests/integration/test_stream.py",
                                                 "Tests/integration/test_signal.py", "Tests/integration/test_admin.py"])
    ap.add_argument("--per-target", type=int, default=25)
    ap.add_argument("--pcap", help="cut an earlier capture instead of running the tests")
    args = ap.parse_args()
    pcap = args.pcap
    if not pcap:
        pcap = os.path.join(tempfile.mkdtemp(prefix="ferry-capture-"), "cap.pcapng")
        cap = subprocess.Popen(["tshark", "-q", "-i", "lo", "-w", pcap, "-f", "tcp or udp"], stderr=subprocess.DEVNULL)
        time.sleep(2)
        subprocess.run([sys.executable, "-m", "pytest", "-q", *args.tests], cwd=ROOT)
        time.sleep(1)
        cap.send_signal(signal.SIGINT)
        cap.wait()
    out = {"stun": [], "framing": [], "http-head": [], "websocket": [], "json": []}
    # UDP: STUN requests clients sent.
    for line in tshark("-r", pcap, "-Y", "udp", "-T", "fields", "-e", "udp.payload").splitlines():
        d = bytes.fromhex(line.strip().replace(":", "")) if line.strip() else b""
        if len(d) >= 20 and d[4:8] == COOKIE and d[0] & 0xC0 == 0 and d[1] & 0x10 == 0 and not d[0] & 0x01:  # requests/indications
            out["stun"].append(d)
    # TCP streams in plaintext (TURN over TCP, HTTP, ws://): what the side that opened the
    # connection sent, in one pass. (TLS streams are left out: following each decrypted stream
    # costs a pass over the capture.)
    streams, client = {}, {}
    for line in tshark("-r", pcap, "-Y", "tcp", "-T", "fields", "-e", "tcp.stream", "-e", "tcp.srcport",
                       "-e", "tcp.flags.syn", "-e", "tcp.flags.ack", "-e", "tcp.payload").splitlines():
        parts = line.split("\t")
        if len(parts) < 5:
            continue
        sid, port, syn, ack, payload = parts[:5]
        if syn in ("1", "True") and ack in ("0", "False"):
            client[sid] = port
        if payload and client.get(sid) == port:
            streams[sid] = streams.get(sid, b"") + bytes.fromhex(payload.replace(":", ""))
    for data in streams.values():
        if data[:1] != b"\x16":
            classify(data, out)
    for target, inputs in out.items():
        d = os.path.join(CORPUS, target)
        os.makedirs(d, exist_ok=True)
        unique = sorted({hashlib.sha1(x).hexdigest()[:12]: x for x in inputs}.items(), key=lambda kv: len(kv[1]))
        step = max(1, len(unique) // args.per_target)  # spread over the sizes seen
        kept = 0
        for h, data in unique[::step][:args.per_target]:
            with open(os.path.join(d, f"cap-{h}"), "wb") as f:
                f.write(data)
            kept += 1
        print(f"{target}: {len(inputs)} captured, {kept} kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
