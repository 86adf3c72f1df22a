"""Many clients at once against one daemon (v6.16, through FUSE): several processes, each getting
reports through the device file, quotes from the quote service and extending RTMR 2 and 3 through the
measurement files, interleaved. Nothing is lost: every extend is in the state's log, the boot event
log (CCEL) plus that log replays to the live RTMRs, every quote verifies (our verifier and dcap-qvl),
carries its own REPORTDATA, and shows RTMR values the log passed through."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import dcap_qvl
import pytest
from cryptography import x509

from tdxmodel import eventlog
from tdxmodel import quote as Q
from tdxmodel.pytest_plugin import ServedDevice
from tdxmodel.state import StateStore, replay_events

pytestmark = pytest.mark.fuse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCESSES, ROUNDS = 4, 5

WORKER = r'''
import fcntl, hashlib, json, os, socket, sys
sys.path.insert(0, sys.argv[1])
from tdxmodel import profiles
from tdxmodel.host import qgs
mount, qgs_path, out, wid, rounds = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
cmd = profiles.get("v6.16").report
done = []
for i in range(rounds):
    nonce = hashlib.sha512(f"worker {wid} round {i}".encode()).digest()
    buf = bytearray(cmd.request_len); buf[:64] = nonce
    fd = os.open(os.path.join(mount, "tdx_guest"), os.O_RDWR)
    fcntl.ioctl(fd, cmd.value, buf); os.close(fd)
    report = bytes(buf[cmd.field("tdreport").offset:])
    s = socket.socket(socket.AF_UNIX); s.settimeout(60); s.connect(qgs_path)
    s.sendall(qgs.frame(qgs.get_quote_request(report))); reply = b""
    while chunk := s.recv(65536): reply += chunk
    s.close()
    with open(os.path.join(out, f"q-{wid}-{i}.bin"), "wb") as f:
        f.write(qgs.inflate_get_quote_response(qgs.unframe(reply))[1])
    for rtmr in (2, 3):
        data = hashlib.sha384(nonce + bytes([rtmr])).digest()
        fd = os.open(os.path.join(mount, f"measurements/rtmr{rtmr}:sha384"), os.O_WRONLY)
        assert os.write(fd, data) == 48
        os.close(fd)
        done.append([rtmr, data.hex()])
print(json.dumps(done))
'''


def test_many_clients_lose_nothing_and_every_quote_verifies(tmp_path, backend):
    with ServedDevice("v6.16", backend=backend.BACKEND_NAME) as d:
        boot = eventlog.replay(d.eventlog())
        script = tmp_path / "worker.py"
        script.write_text(WORKER)
        procs = [subprocess.Popen([sys.executable, str(script), ROOT, str(d.mount), d.qgs_socket, str(tmp_path),
                                   str(w), str(ROUNDS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for w in range(PROCESSES)]
        extends = []
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
            extends += [tuple(e) for e in json.loads(out)]
        live = d.measurements()
        counters = d.host_counters()["qgs"]
        coll, root_der = d.collateral(), d.root_ca
        store = StateStore(str(d.state), backend=backend)
        events = store.events()
        stored = list(store.load().rtmr)
    # nothing lost: every extend a worker made (and was told succeeded) is in the log, once
    assert sorted((e["rtmr"], e["data"]) for e in events) == sorted(extends)
    assert len(events) == PROCESSES * ROUNDS * 2
    final = replay_events(events, boot)
    assert [live[f"rtmr{i}:sha384"] for i in range(4)] == final == stored
    # every value RTMR2/3 took along the log, in its order
    seen = {2: {boot[2]}, 3: {boot[3]}}
    value = list(boot)
    for e in events:
        value[e["rtmr"]] = hashlib.sha384(value[e["rtmr"]] + bytes.fromhex(e["data"])).digest()
        seen[e["rtmr"]].add(value[e["rtmr"]])
    assert counters["quotes"] == PROCESSES * ROUNDS and counters["error_responses"] == 0
    root = x509.load_der_x509_certificate(root_der)
    dcoll = dcap_qvl.QuoteCollateralV3.from_json(coll.to_dcap_qvl_json())
    for w in range(PROCESSES):
        for i in range(ROUNDS):
            raw = (tmp_path / f"q-{w}-{i}.bin").read_bytes()
            q = Q.parse_quote(raw)
            assert q.reportdata == hashlib.sha512(f"worker {w} round {i}".encode()).digest()
            assert Q.verify(raw, coll, root).ok
            assert dcap_qvl.verify_with_root_ca(raw, dcoll, root_der, int(time.time())).status == "UpToDate"
            assert q.fields["rtmr2"] in seen[2] and q.fields["rtmr3"] in seen[3]
            assert (q.fields["rtmr0"], q.fields["rtmr1"]) == (boot[0], boot[1])
