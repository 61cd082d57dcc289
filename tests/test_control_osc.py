"""OSC over real UDP on loopback: typed addresses, feedback, a fuzz of random packets, the
OSCQuery namespace over real HTTP, and a headless instrument played end to end."""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

from paik.errors import PaikError
from paik.instrument.control.live import Live
from paik.instrument.control.osc import OscServer, address_space, translate
from paik.instrument.control.oscquery import OscQueryServer
from paik.instrument.control.params import SPECS, Command
from paik.instrument.control.scenes import SceneStore
from paik.instrument.render.source import Source
from instrument_fixtures import make_bundle

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    b = tmp_path_factory.mktemp("osc") / "b"
    make_bundle(b, steps=3, blocks=4, heads=2, video=False, preview=False)
    return b


@pytest.fixture
def rig(bundle, tmp_path):
    """A Live fed by a real OSC server on an ephemeral loopback port; the test drains it."""
    from paik.instrument.render import colormaps
    from paik.instrument.control.params import Params

    src = Source.open(bundle, "cpu")
    d = src.dims
    p = Params().bind(len(src.words), d.n_steps, d.n_blocks, d.n_heads, colormaps.available())
    p.smooth = 0
    lv = Live(src, p, SceneStore(tmp_path / "scenes", shipped=None))
    srv = OscServer(lv, "127.0.0.1", 0).start()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(2.0)
    yield lv, srv, client
    client.close()
    srv.stop()


def msg(address, *args) -> bytes:
    b = OscMessageBuilder(address)
    for a in args:
        b.add_arg(a)
    return b.build().dgram


def settle(lv, srv, expect_received: int, timeout=3.0):
    """Wait until the server has read that many packets, then apply them (as the loop would)."""
    deadline = time.monotonic() + timeout
    while srv.received < expect_received and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.01)
    return lv.update(time.monotonic())


def test_translate_types():
    assert translate("/paik/token", ["kiss"]) == Command("token", "set", "kiss", "osc")
    assert translate("/paik/token", [2]).value == 2
    assert translate("/paik/head", [-1]).value == -1
    assert translate("/paik/head", [3.0]).value == 3  # TouchDesigner sends floats
    assert translate("/paik/step/norm", [1]).op == "norm"
    assert translate("/paik/playing", []).op == "toggle"
    assert translate("/paik/scene/recall", [3]) == Command("scene", "recall", "3", "osc")
    assert translate("/paik/cmd", ["step nudge 0.5"]) == Command("step", "nudge", 0.5, "osc")
    for address, args in (("/paik/gain", ["loud"]), ("/paik/head", [1.5]), ("/paik/gain", [1.0, 2.0]),
                          ("/paik/colormap", [1.0]), ("/other", [1]), ("/paik/step/wobble", [1]),
                          ("/paik/scene/recall", ["../x"]), ("/paik/load", [3]), ("/paik/view/toggle", [])):
        with pytest.raises(PaikError):
            translate(address, args)


def test_osc_sets_parameters_and_feeds_back_state(rig):
    lv, srv, client = rig
    dest = ("127.0.0.1", srv.port)
    client.sendto(msg("/paik/subscribe"), dest)
    sent = 1
    first = {}
    deadline = time.monotonic() + 3
    while "/paik/counts" not in first and time.monotonic() < deadline:
        m = OscPacket(client.recvfrom(65536)[0]).messages[0].message
        first[m.address] = list(m.params)
    assert first["/paik/counts"] == [4, 3, 4, 2] and first["/paik/words"] == ["a", "red", "kiss", "</s>"]
    for address, *args in (("/paik/token", "kiss"), ("/paik/block", 2), ("/paik/head", -1), ("/paik/step", 1.5),
                           ("/paik/colormap", "viridis"), ("/paik/gain/norm", 0.25), ("/paik/view", 8),
                           ("/paik/playing", 0), ("/paik/gain", "loud"), ("/paik/head", 99)):
        client.sendto(msg(address, *args), dest)
        sent += 1
    settle(lv, srv, sent)
    t = lv.target
    assert (t.token, t.block, t.head, t.step, t.colormap, t.gain, t.view, t.playing) == (
        2, 2.0, -1, 1.5, "viridis", 4.0, "sweep", False)
    got = {}
    deadline = time.monotonic() + 3
    while not {"/paik/token/word", "/paik/gain/norm", "/paik/playing", "/paik/error"} <= set(got):
        assert time.monotonic() < deadline, got
        m = OscPacket(client.recvfrom(65536)[0]).messages[0].message
        got[m.address] = list(m.params)
    assert got["/paik/token/word"] == ["kiss"] and got["/paik/colormap"] == ["viridis"]
    assert got["/paik/gain/norm"] == [pytest.approx(0.25)] and got["/paik/playing"] == [0]
    assert "/paik/error" in got  # the refused ones were reported to the subscriber


def test_fuzz_thousands_of_random_packets_never_stop_it(rig, caplog):
    lv, srv, client = rig
    rng = random.Random(1234)
    dest = ("127.0.0.1", srv.port)
    # everything but the addresses that write files (those get their own checks)
    writes = ("/paik/snapshot", "/paik/load", "/paik/scene/save", "/paik/scene/delete", "/paik/learn/save")
    addresses = [a.path for a in address_space(lv.target) if a.path not in writes]
    addresses += ["/paik", "/", "/paik/", "/x/y", "/paik/step/norm/x"]
    values = [0, 1, -1, 3.5, -1e30, 1e30, float("nan"), float("inf"), "", "kiss", "x" * 300, True, False, None,
              b"\x00\x01", 2**31 - 1]
    n = 3000
    for i in range(n):
        kind = rng.random()
        if kind < 0.3:  # random bytes, some starting like OSC
            data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
            if rng.random() < 0.5:
                data = rng.choice([b"/paik/step\x00\x00", b"#bundle\x00", b"/paik/gain\x00\x00,f"]) + data
        elif kind < 0.5:  # a valid message cut short or with a wrong type tag
            data = msg(rng.choice(addresses), rng.random())
            data = data[: rng.randint(0, len(data))] if rng.random() < 0.5 else data.replace(b",f", b",i\x00")
        else:  # well formed, random address and arguments
            b = OscMessageBuilder(rng.choice(addresses))
            for _ in range(rng.randint(0, 3)):
                v = rng.choice(values)
                if v is None:
                    b.add_arg(None, "N")
                elif isinstance(v, bytes):
                    b.add_arg(v, "b")
                elif isinstance(v, bool):
                    b.add_arg(v)
                elif isinstance(v, int):
                    b.add_arg(v, "i")
                elif isinstance(v, float):
                    b.add_arg(v, "f")
                else:
                    b.add_arg(v, "s")
            data = b.build().dgram
        try:
            client.sendto(data, dest)
        except OSError:
            pass
        if i % 50 == 0:
            lv.update(time.monotonic())  # the loop keeps drawing meanwhile
            time.sleep(0.003)  # keep the socket buffer from overflowing
    time.sleep(0.2)
    lv.update(time.monotonic())
    assert srv._thread.is_alive() and srv.received > n * 0.5
    # still playable afterwards
    client.sendto(msg("/paik/colormap", "jet"), dest)
    client.sendto(msg("/paik/smooth", 0.0), dest)
    client.sendto(msg("/paik/gain", 3.0), dest)
    settle(lv, srv, srv.received + 3)
    assert (lv.target.colormap, lv.target.gain) == ("jet", 3.0)
    lines = [r for r in caplog.records if r.name.startswith("paik")]
    assert len(lines) < 60, f"{len(lines)} log lines for {n} packets: not rate-limited"
    assert lv.rlog.count > 500


def test_allowlist_drops_other_senders(bundle, tmp_path):
    from paik.instrument.render import colormaps
    from paik.instrument.control.params import Params

    src = Source.open(bundle, "cpu")
    lv = Live(src, Params().bind(4, 3, 4, 2, colormaps.available()), SceneStore(tmp_path, shipped=None))
    srv = OscServer(lv, "127.0.0.1", 0, allow=["10.1.2.3"]).start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.sendto(msg("/paik/gain", 2.0), ("127.0.0.1", srv.port))
        settle(lv, srv, 1)
        assert lv.target.gain == 1.0
        with pytest.raises(PaikError, match="osc-allow"):
            OscServer(lv, "127.0.0.1", 0, allow=["not-an-ip"])
    finally:
        srv.stop()


def test_oscquery_namespace_over_http(rig):
    lv, srv, _ = rig
    q = OscQueryServer(lv, "127.0.0.1", 0, srv.port).start(advertise=False)
    try:
        base = f"http://127.0.0.1:{q.port}"
        info = json.load(urllib.request.urlopen(base + "/?HOST_INFO", timeout=5))
        assert info["OSC_PORT"] == srv.port and info["OSC_TRANSPORT"] == "UDP"
        tree = json.load(urllib.request.urlopen(base + "/", timeout=5))
        paik = tree["CONTENTS"]["paik"]["CONTENTS"]
        assert set(SPECS) <= set(paik)
        assert paik["colormap"]["TYPE"] == "s" and "magma" in paik["colormap"]["RANGE"][0]["VALS"]
        assert paik["step"]["RANGE"] == [{"MIN": 0, "MAX": 2}] and paik["step"]["CONTENTS"]["norm"]["TYPE"] == "f"
        assert paik["scene"]["CONTENTS"]["recall"]["ACCESS"] == 2
        lv.put(Command("gain", "set", 2.5))
        lv.update(0.0)
        assert json.load(urllib.request.urlopen(base + "/paik/gain?VALUE", timeout=5)) == {"VALUE": [2.5]}
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/paik/nothing", timeout=5)
        assert e.value.code == 404
    finally:
        q.stop()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
        for _ in range(50):
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            try:
                t.bind(("127.0.0.1", port))
                return port
            except OSError:
                u.close()
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raise RuntimeError("no free port")


def test_headless_instrument_played_over_udp(tmp_path):
    """paik play --headless --osc-port N: state reported over OSC, frames checked in pixels."""
    from PIL import Image

    b = tmp_path / "b"
    make_bundle(b, steps=3, blocks=4, heads=2, video=False, preview=False)
    port = _free_port()
    argv = [sys.executable, "-m", "paik", "play", str(b), "--headless", "--osc-port", str(port),
            "--size", "64x48", "--seconds", "60", "--no-zeroconf", "--scenes", str(tmp_path / "scenes"),
            "--colormap", "grayscale", "--smooth", "0", "--console", "off", "--out-dir", str(tmp_path / "shots")]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PAIK_SCENES": str(tmp_path / "scenes")})
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(0.5)
    dest = ("127.0.0.1", port)
    try:
        state = {}
        deadline = time.monotonic() + 40
        while "/paik/counts" not in state:  # subscribe until the instrument is up
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1] if proc.poll() else "timeout"
            client.sendto(msg("/paik/subscribe"), dest)
            try:
                while True:
                    m = OscPacket(client.recvfrom(65536)[0]).messages[0].message
                    state[m.address] = list(m.params)
            except socket.timeout:
                pass
        assert state["/paik/colormap"] == ["grayscale"]

        def shot(name, *messages):
            for m in messages:
                client.sendto(msg(*m), dest)
            path = tmp_path / "shots" / name
            client.sendto(msg("/paik/snapshot", name), dest)  # a plain name: written into --out-dir
            end = time.monotonic() + 10
            while not path.exists():
                assert time.monotonic() < end, "no snapshot"
                time.sleep(0.02)
            return np.asarray(Image.open(path)).astype(int)

        a = shot("a.png", ("/paik/token", "kiss"), ("/paik/step", 0.0), ("/paik/playing", 0), ("/paik/time", 0.0))
        b2 = shot("b.png", ("/paik/colormap", "jet"))
        c = shot("c.png", ("/paik/gain", 0.0))
        assert a.shape == (48, 64, 3) and a.std() > 5
        assert np.all(a[..., 0] == a[..., 1])  # grayscale
        assert np.abs(b2[..., 0] - b2[..., 2]).mean() > 10  # jet is colored
        assert (c == c[0, 0]).all() and (c[0, 0] == [0, 0, 128]).all()  # no gain: jet's bottom everywhere
        # the state it reports follows
        client.sendto(msg("/paik/scene/save", 5), dest)
        client.sendto(msg("/paik/state"), dest)
        got = {}
        end = time.monotonic() + 10
        while got.get("/paik/gain") != [0.0] or got.get("/paik/scene") != ["5"]:
            assert time.monotonic() < end, got
            try:
                m = OscPacket(client.recvfrom(65536)[0]).messages[0].message
                got[m.address] = list(m.params)
            except socket.timeout:
                client.sendto(msg("/paik/state"), dest)
        assert got["/paik/token/word"] == ["kiss"] and got["/paik/colormap"] == ["jet"]
        assert (tmp_path / "scenes" / "5.toml").is_file()
    finally:
        client.close()
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err


def test_zeroconf_failure_is_a_warning(rig, monkeypatch, caplog):
    import zeroconf

    lv, srv, _ = rig

    class NoMulticast:
        def __init__(self, *a, **k):
            raise OSError(19, "No such device (no multicast here)")

    monkeypatch.setattr(zeroconf, "Zeroconf", NoMulticast)
    q = OscQueryServer(lv, "127.0.0.1", 0, srv.port).start(advertise=True)
    try:
        q._adv.join(timeout=5)
        assert any("zeroconf" in r.getMessage() for r in caplog.records)
        assert json.load(urllib.request.urlopen(f"http://127.0.0.1:{q.port}/?HOST_INFO", timeout=5))["NAME"] == "Paik"
    finally:
        q.stop()


def test_taken_ports_default_plays_on_explicit_is_an_error(bundle, capsys, caplog):
    from paik.cli import main

    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        try:
            holder.bind(("127.0.0.1", 9000))
        except OSError:
            pass  # already taken by someone else: the same situation
        assert main(["play", str(bundle), "--headless", "--frames", "2", "--size", "16x16", "--console", "off"]) == 0
        assert any("playing without OSC" in r.getMessage() for r in caplog.records)
        busy = holder.getsockname()[1] if holder.getsockname()[1] else 9000
        code = main(["play", str(bundle), "--headless", "--frames", "2", "--osc-port", str(busy), "--console", "off"])
        assert code == 2 and "cannot listen for OSC" in capsys.readouterr().err
    finally:
        holder.close()
