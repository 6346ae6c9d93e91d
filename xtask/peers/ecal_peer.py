#!/usr/bin/env python3
"""Real eCAL 6.1.1 publisher / subscriber for the interop harness (this project's own script).

Same command line and JSON summary as the Rust `publisher` / `subscriber` examples, so the
harness compares both sides the same way:
  ecal_peer.py pub --topic T [--topic T2] --size N --count C --rate HZ [--wait-subscriber S]
  ecal_peer.py sub --topic T [--topic T2] --count C --timeout S [--verify mod251|none]
  ecal_peer.py monitor --settle S [--snapshots N --interval S]
      (eCAL's own monitoring view: one JSON line per snapshot, the first after S seconds)
The eCAL configuration comes from $ECAL_DATA/ecal.yaml (the harness writes it).
Digest: SHA-256 over the messages, each prefixed by its length as u64 little-endian.
"""
import argparse
import faulthandler
import hashlib
import json
import struct
import sys
import threading
import time

import ecal.nanobind_core as ecal


def parse():
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["pub", "sub", "monitor"])
    ap.add_argument("--topic", action="append", default=[])
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--snapshots", type=int, default=1)
    ap.add_argument("--interval", type=float, default=3.0)
    ap.add_argument("--size", type=int, default=10)
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--wait-subscriber", type=float, default=20.0)
    ap.add_argument("--linger", type=float, default=1.5)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--verify", default="mod251")
    ap.add_argument("--idle", type=float, default=0.0)
    ap.add_argument("--no-digest", action="store_true")
    ap.add_argument("--datatype", default="", help="NAME:ENCODING the subscriber declares (default: none)")
    return ap.parse_args()


class Digest:
    hashing = True

    def __init__(self):
        self.h = hashlib.sha256()
        self.count = 0
        self.bytes = 0

    def update(self, msg):
        if Digest.hashing:
            self.h.update(struct.pack("<Q", len(msg)))
            self.h.update(msg)
        self.count += 1
        self.bytes += len(msg)


def shutdown(subs=()):
    """Stops callbacks, then finalizes eCAL. If finalize hangs or crashes (seen once in CI after
    a complete run), the Python stacks go to stderr (the harness keeps it in the case log)."""
    faulthandler.enable()
    faulthandler.dump_traceback_later(10, exit=False)
    for s in subs:
        s.remove_receive_callback()
    ecal.finalize()
    faulthandler.cancel_dump_traceback_later()


def run_pub(a):
    ecal.initialize("ecal_peer_pub")
    cfg = ecal.get_publisher_configuration()
    dti = ecal.DataTypeInformation("bytes", "raw", b"")
    pubs = [(t, ecal.Publisher(t, dti, cfg)) for t in a.topic]
    deadline = time.time() + a.wait_subscriber
    while not all(p.get_subscriber_count() > 0 for _, p in pubs):
        if time.time() > deadline:
            print(json.dumps({"role": "pub", "error": "no subscriber"}), flush=True)
            shutdown()
            return 1
        time.sleep(0.05)
    # base[j] = j mod 251, so payload k = base[k : k + size] has byte i = (i + k) mod 251.
    base = bytes(j % 251 for j in range(a.size + 251))
    digests = {t: Digest() for t in a.topic}
    period = 1.0 / a.rate if a.rate > 0 else 0.0
    start = time.time()
    for k in range(a.count):
        payload = base[k % 251 : k % 251 + a.size]
        for t, p in pubs:
            if p.send(payload):
                digests[t].update(payload)
        if period:
            delay = start + period * (k + 1) - time.time()
            if delay > 0:
                time.sleep(delay)
    time.sleep(a.linger)
    for t, p in pubs:
        d = digests[t]
        print(json.dumps({"role": "pub", "impl": "ecal", "topic": t, "sent": d.count, "bytes": d.bytes,
                          "sha256": d.h.hexdigest(), "entity_id": str(p.get_topic_id().topic_id.entity_id)}),
              flush=True)
    shutdown()
    return 0


def run_sub(a):
    ecal.initialize("ecal_peer_sub")
    cfg = ecal.get_subscriber_configuration()
    lock = threading.Lock()
    state = {t: {"d": Digest(), "ok": True, "types": set(), "clocks": [], "first": None, "last": None} for t in a.topic}
    subs = []
    for t in a.topic:
        if a.datatype:
            name, _, encoding = a.datatype.partition(":")
            dti = ecal.DataTypeInformation(name, encoding, b"")
        else:
            dti = ecal.DataTypeInformation()
        s = ecal.Subscriber(t, dti, cfg)

        def cb(topic_id, dti, data, t=t):
            buf = bytes(data.buffer) if (Digest.hashing or a.verify != "none") else data.buffer
            with lock:
                st = state[t]
                k = st["d"].count
                if a.verify == "mod251":
                    n = len(buf)
                    expect = bytes((i + k) % 251 for i in range(min(n, 4096)))
                    if buf[: len(expect)] != expect or (n > 4096 and buf[-1] != (n - 1 + k) % 251):
                        st["ok"] = False
                st["d"].update(buf)
                now = time.monotonic()
                if st["first"] is None:
                    st["first"] = now
                st["last"] = now
                st["types"].add((dti.name, dti.encoding))
                st["clocks"].append(data.send_clock)

        s.set_receive_callback(cb)
        subs.append(s)
    deadline = time.time() + a.timeout
    # The most publishers each subscriber saw as connected (needs their registration).
    max_pubs = {t: 0 for t in a.topic}
    while time.time() < deadline:
        for t, s in zip(a.topic, subs):
            max_pubs[t] = max(max_pubs[t], s.get_publisher_count())
        with lock:
            if all(st["d"].count >= a.count for st in state.values()):
                break
            lasts = [st["last"] for st in state.values()]
            if a.idle > 0 and all(lasts) and time.monotonic() - max(lasts) >= a.idle:
                break
        time.sleep(0.02)
    ok = True
    with lock:
        for t in a.topic:
            st = state[t]
            d = st["d"]
            ok = ok and d.count >= a.count and st["ok"]
            print(json.dumps({"role": "sub", "impl": "ecal", "topic": t, "received": d.count, "bytes": d.bytes,
                              "sha256": d.h.hexdigest(), "verified": st["ok"],
                              "datatypes": sorted(map(list, st["types"])),
                              "publisher_count_max": max_pubs[t],
                              "first_to_last_s": (st["last"] - st["first"]) if st["first"] else None,
                              "cpu_s": time.process_time(),
                              "clock_first_last": [st["clocks"][0], st["clocks"][-1]] if st["clocks"] else []}),
                  flush=True)
    shutdown(subs)
    return 0 if ok else 1


def plain(v):
    """A monitoring value as JSON: enums by name, nanobind structs by their public attributes."""
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, bytes):
        return {"len": len(v), "sha256": hashlib.sha256(v).hexdigest()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if hasattr(v, "name") and hasattr(v, "value") and type(v).__name__ not in ("Topic", "Process"):
        return str(v.name)
    out = {}
    for k in dir(v):
        if k.startswith("_"):
            continue
        x = getattr(v, k)
        if callable(x):
            continue
        out[k] = plain(x)
    return out


def run_monitor(a):
    """Reads eCAL's monitoring view (what eCAL Monitor and ecal_mon_cli show) and prints it:
    one JSON object with processes, publishers and subscribers."""
    ecal.initialize("ecal_peer_monitor", ecal.init.ALL)
    time.sleep(a.settle)
    for k in range(a.snapshots):
        if k:
            time.sleep(a.interval)
        m = ecal.monitoring.get_monitoring(ecal.monitoring.Entity.ALL)
        out = {"role": "monitor", "snapshot": k, "time": time.time(),
               "processes": [plain(p) for p in m.processes],
               "publishers": [plain(p) for p in m.publishers],
               "subscribers": [plain(s) for s in m.subscribers]}
        print(json.dumps(out), flush=True)
    shutdown()
    return 0


if __name__ == "__main__":
    args = parse()
    Digest.hashing = not args.no_digest
    if not args.topic and args.role != "monitor":
        sys.exit("--topic is required")
    sys.exit({"pub": run_pub, "sub": run_sub, "monitor": run_monitor}[args.role](args))
