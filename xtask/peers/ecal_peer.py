#!/usr/bin/env python3
"""Real eCAL 6.1.1 publisher / subscriber for the interop harness (this project's own script).

Same command line and JSON summary as the Rust `publisher` / `subscriber` examples, so the
harness compares both sides the same way:
  ecal_peer.py pub --topic T [--topic T2] --size N --count C --rate HZ [--wait-subscriber S]
  ecal_peer.py sub --topic T [--topic T2] --count C --timeout S [--verify mod251|none]
  ecal_peer.py pub --proto ...   (protobuf messages mwtest.Pose, built from a descriptor here,
                                 announced with their FileDescriptorSet as eCAL's proto publishers do)
  ecal_peer.py monitor --settle S [--snapshots N --interval S]
      (eCAL's own monitoring view: one JSON line per snapshot, the first after S seconds)
  ecal_peer.py mcap-check --file F.mcap [--cut] [--mod251 TOPIC]
      (reads an MCAP file with the official `mcap` / `mcap-protobuf-support` readers; one JSON
       line: channels, schemas, counts, stream digests, protobuf fields checked; --cut reads a
       file that ends early as far as it is complete)
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
    ap.add_argument("role", choices=["pub", "sub", "monitor", "mcap-check"])
    ap.add_argument("--proto", action="store_true", help="pub: protobuf mwtest.Pose messages")
    ap.add_argument("--file", default="")
    ap.add_argument("--cut", action="store_true")
    ap.add_argument("--mod251", action="append", default=[])
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


def pose_type():
    """The protobuf message mwtest.Pose (with a nested message, repeated, bytes and scalar
    fields), built from a descriptor (no protoc), and its serialized FileDescriptorSet."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="mwtest/pose.proto", package="mwtest", syntax="proto3")
    inner = fdp.message_type.add(name="Inner")
    inner.field.add(name="id", number=1, type=F.TYPE_UINT32, label=F.LABEL_OPTIONAL)
    inner.field.add(name="ok", number=2, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    pose = fdp.message_type.add(name="Pose")
    pose.field.add(name="frame", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    pose.field.add(name="seq", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    pose.field.add(name="x", number=3, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    pose.field.add(name="cov", number=4, type=F.TYPE_FLOAT, label=F.LABEL_REPEATED)
    pose.field.add(name="blob", number=5, type=F.TYPE_BYTES, label=F.LABEL_OPTIONAL)
    pose.field.add(name="inner", number=6, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL, type_name=".mwtest.Inner")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("mwtest.Pose"))
    fds = descriptor_pb2.FileDescriptorSet()
    fds.file.append(fdp)
    return cls, fds.SerializeToString()


def pose_fields(k):
    """Message k's field values (the checker compares decoded messages with these)."""
    return {"frame": f"frame-{k}", "seq": k, "x": k * 0.5, "cov": [float(k), k + 1.5],
            "blob": bytes([k % 256]) * 3, "inner_id": k, "inner_ok": k % 2 == 0}


def pose_payload(cls, k):
    f = pose_fields(k)
    m = cls(frame=f["frame"], seq=f["seq"], x=f["x"], cov=f["cov"], blob=f["blob"])
    m.inner.id = f["inner_id"]
    m.inner.ok = f["inner_ok"]
    return m.SerializeToString()


def pose_matches(m, k):
    f = pose_fields(k)
    got = {"frame": m.frame, "seq": m.seq, "x": m.x, "cov": list(m.cov), "blob": bytes(m.blob),
           "inner_id": m.inner.id, "inner_ok": m.inner.ok}
    return got == f, got


def run_pub(a):
    ecal.initialize("ecal_peer_pub")
    cfg = ecal.get_publisher_configuration()
    if a.proto:
        pose_cls, fds = pose_type()
        dti = ecal.DataTypeInformation("mwtest.Pose", "proto", fds)
    else:
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
        payload = pose_payload(pose_cls, k) if a.proto else base[k % 251 : k % 251 + a.size]
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


def run_mcap_check(a):
    """Reads an MCAP recording with the official readers and prints what it holds."""
    from mcap.reader import make_reader
    from mcap.stream_reader import StreamReader
    from mcap.records import Channel, Message, Schema
    from mcap_protobuf.decoder import DecoderFactory

    factory = DecoderFactory()
    schemas, channels, out, decoders = {}, {}, {}, {}
    error = None

    def on_message(channel, schema, msg):
        c = out[channel.topic]
        k = c["messages"]
        c["messages"] += 1
        c["digest"].update(bytes(msg.data))
        if c["first_sequence"] is None:
            c["first_sequence"] = msg.sequence
        if msg.sequence != c["first_sequence"] + k:
            c["sequence_ok"] = False
        if msg.publish_time > msg.log_time or msg.log_time == 0:
            c["times_ok"] = False
        if channel.topic in a.mod251:
            n = len(msg.data)
            seq_k = msg.sequence - 1
            if bytes(msg.data) != bytes((i + seq_k) % 251 for i in range(n)):
                c["mod251_ok"] = False
        if channel.message_encoding == "protobuf":
            dec = decoders.get(channel.id)
            if dec is None:
                dec = decoders[channel.id] = factory.decoder_for(channel.message_encoding, schema)
            decoded = dec(bytes(msg.data))
            c["proto_decoded"] += 1
            if schema.name == "mwtest.Pose":
                ok, got = pose_matches(decoded, k)
                c["proto_checked"] += 1
                if not ok and c["proto_mismatch"] is None:
                    c["proto_mismatch"] = {"k": k, "got": repr(got)}

    def on_channel(ch):
        channels[ch.id] = ch
        sc = schemas.get(ch.schema_id)
        out.setdefault(ch.topic, {"topic": ch.topic, "message_encoding": ch.message_encoding,
                                  "schema_name": sc.name if sc else None,
                                  "schema_encoding": sc.encoding if sc else None,
                                  "metadata": dict(ch.metadata), "messages": 0, "digest": Digest(),
                                  "first_sequence": None, "sequence_ok": True, "times_ok": True,
                                  "mod251_ok": True, "proto_decoded": 0, "proto_checked": 0,
                                  "proto_mismatch": None})

    result = {"role": "mcap-check", "file": a.file}
    with open(a.file, "rb") as f:
        if a.cut:
            # A file that ends early: records up to the break, with no summary to rely on.
            try:
                for r in StreamReader(f).records:
                    if isinstance(r, Schema):
                        schemas[r.id] = r
                    elif isinstance(r, Channel):
                        on_channel(r)
                    elif isinstance(r, Message):
                        ch = channels[r.channel_id]
                        on_message(ch, schemas.get(ch.schema_id), r)
            except Exception as e:  # the end of a cut file: how it ended is reported
                error = f"{type(e).__name__}: {e}"
        else:
            reader = make_reader(f, decoder_factories=[factory])
            summary = reader.get_summary()
            for sid, sc in summary.schemas.items():
                schemas[sid] = sc
            for ch in summary.channels.values():
                on_channel(ch)
            for sc, ch, msg in reader.iter_messages(log_time_order=False):
                on_message(ch, sc, msg)
            st = summary.statistics
            result["summary"] = {"message_count": st.message_count, "chunk_count": st.chunk_count,
                                 "chunk_indexes": len(summary.chunk_indexes),
                                 "compression": sorted({ci.compression for ci in summary.chunk_indexes}),
                                 "channel_message_counts": {channels[i].topic: n
                                                            for i, n in st.channel_message_counts.items()}}
            result["metadata"] = {m.name: dict(m.metadata) for m in reader.iter_metadata()}
    for c in out.values():
        d = c.pop("digest")
        c["sha256"], c["bytes"] = d.h.hexdigest(), d.bytes
    result["channels"] = sorted(out.values(), key=lambda c: c["topic"])
    result["end"] = error
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    args = parse()
    Digest.hashing = not args.no_digest
    if args.role == "mcap-check":
        sys.exit(run_mcap_check(args))
    if not args.topic and args.role != "monitor":
        sys.exit("--topic is required")
    sys.exit({"pub": run_pub, "sub": run_sub, "monitor": run_monitor}[args.role](args))
