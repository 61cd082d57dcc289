"""OSCQuery: the address space as an HTTP JSON namespace, advertised over zeroconf (mDNS), so
TouchDesigner, VDMX, Chataigne or ossia score can browse and bind every address.

``GET /`` is the whole tree; ``GET /paik/step`` one node; ``?VALUE``, ``?TYPE``, ``?RANGE``,
``?ACCESS``, ``?DESCRIPTION`` one attribute; ``?HOST_INFO`` says where to send OSC. Values are
read from :attr:`Live.values` (replaced whole each frame), never from the render loop's bank.
Advertising can fail where there is no multicast (containers, sandboxes): that is a warning,
the HTTP namespace still works.

Exposure follows OSC's: the namespace listens on the OSC host and answers only the addresses of
``--osc-allow`` (other clients are disconnected unanswered); it sends no CORS header, so a web
page in a browser cannot read it. At most ``MAX_CLIENTS`` connections are served at once (more
are closed), each for at most ``TIMEOUT`` seconds; a client that goes away mid-answer is a
debug line, not a traceback on the performer's terminal.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from paik.errors import PaikError

from paik.instrument.control.live import Live
from paik.instrument.control.osc import PREFIX, Address, address_space, host_of, parse_allow

log = logging.getLogger("paik.oscquery")

MAX_CLIENTS = 64  # connections served at once; more are closed at once (each holds a thread)
TIMEOUT = 5.0  # seconds a connection may take to ask and to read the answer
BACKLOG = 256  # connections the kernel queues before accept (socketserver's default is 5)

ATTRS = ("VALUE", "TYPE", "RANGE", "ACCESS", "DESCRIPTION", "FULL_PATH", "CONTENTS")


def _type(a: Address) -> str | None:
    t = a.types[0]
    if t == "":
        return None  # a method without arguments (a trigger)
    return t


def _json_value(v):
    if isinstance(v, bool):
        return int(v)  # bools are sent and accepted as i 0/1 (Pd and Max have no T/F)
    return list(v) if isinstance(v, tuple) else v


def namespace(live: Live) -> dict:
    """The OSCQuery tree of every address, with current values."""
    p, values = live.target, live.values
    root = {"FULL_PATH": "/", "ACCESS": 0, "DESCRIPTION": "Paik: a live instrument for cross-attention maps",
            "CONTENTS": {}}
    for a in address_space(p):
        node = root
        parts = a.path.strip("/").split("/")
        for i, part in enumerate(parts):
            contents = node.setdefault("CONTENTS", {})
            node = contents.setdefault(part, {"FULL_PATH": "/" + "/".join(parts[: i + 1]), "ACCESS": 0})
        node["DESCRIPTION"] = a.help
        node["ACCESS"] = 3 if a.param else 2  # 3: read + write; 2: write only
        t = _type(a)
        if t is not None:
            node["TYPE"] = t
        if a.param:
            v = values.get(a.param)
            if a.path.endswith("/norm"):
                from paik.instrument.control.params import normalized

                v = normalized(p, a.param, v)
            node["VALUE"] = [_json_value(v)]
        if a.rng:
            if all(isinstance(x, str) for x in a.rng):
                node["RANGE"] = [{"VALS": list(a.rng)}]
            elif len(a.rng) == 2:
                node["RANGE"] = [{"MIN": a.rng[0], "MAX": a.rng[1]}]
    return root


def _find(tree: dict, path: str) -> dict | None:
    node = tree
    for part in [x for x in path.strip("/").split("/") if x]:
        node = node.get("CONTENTS", {}).get(part)
        if node is None:
            return None
    return node


class _Server(ThreadingHTTPServer):
    request_queue_size = BACKLOG
    daemon_threads = True
    block_on_close = False

    def __init__(self, address, handler, allow: set[str] | None, family):
        self.address_family = family
        self.allow = allow
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        super().__init__(address, handler)

    def verify_request(self, request, client_address) -> bool:
        if self.allow is not None and host_of(client_address) not in self.allow:
            log.debug("oscquery: refused a connection from %s (not in --osc-allow)", client_address[0])
            return False
        return True

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            log.debug("oscquery: %d connections already; closed one from %s", MAX_CLIENTS, client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        # socketserver prints a traceback to stderr; a client that hangs up is no news
        log.debug("oscquery: connection from %s ended badly", client_address[0], exc_info=True)


class OscQueryServer:
    """``allow``: the addresses that may connect (as ``--osc-allow``; None = anyone who can
    reach ``host``)."""

    def __init__(self, live: Live, host: str, port: int, osc_port: int, name: str = "Paik",
                 allow: list[str] | None = None):
        self.live, self.osc_port, self.name = live, osc_port, name
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = TIMEOUT  # StreamRequestHandler sets it on the socket: idle clients are dropped

            def do_GET(self):  # noqa: N802 (the stdlib's name)
                try:
                    server._get(self)
                except (ConnectionError, TimeoutError, OSError) as e:
                    log.debug("oscquery: %s went away: %s", self.client_address[0], e)
                    self.close_connection = True

            def log_message(self, fmt, *args):
                log.debug("http: " + fmt, *args)

        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        except socket.gaierror as e:
            raise PaikError(f"--osc-host {host!r}: {e.strerror}") from None
        try:
            self.httpd = _Server(info[4], Handler, parse_allow(allow), info[0])
        except OSError as e:
            raise PaikError(f"cannot serve OSCQuery on {host}:{port} over HTTP ({e.strerror}); pick another "
                            "--oscquery-port, or --oscquery-port -1 to turn it off") from None
        self.host, self.port = self.httpd.server_address[:2]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="paik-oscquery", daemon=True)
        self._zc = self._info = self._adv = None

    def start(self, advertise: bool = True) -> "OscQueryServer":
        self._thread.start()
        if advertise:
            self._adv = threading.Thread(target=self._advertise, name="paik-zeroconf", daemon=True)
            self._adv.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._adv is not None:
            self._adv.join(timeout=5)  # registering takes a few broadcasts; close after, not during
        zc = self._zc
        if zc is not None:
            try:
                zc.unregister_all_services()
                zc.close()
            except Exception:
                pass

    def host_info(self) -> dict:
        return {"NAME": self.name, "OSC_IP": self.host, "OSC_PORT": self.osc_port, "OSC_TRANSPORT": "UDP",
                "EXTENSIONS": {"ACCESS": True, "VALUE": True, "RANGE": True, "DESCRIPTION": True, "TAGS": False,
                               "CLIPMODE": False, "UNIT": False, "CRITICAL": False, "LISTEN": False,
                               "PATH_CHANGED": False}}

    def _get(self, req: BaseHTTPRequestHandler) -> None:
        url = urlsplit(req.path)
        path, query = unquote(url.path), url.query.upper()
        if query == "HOST_INFO":
            return self._reply(req, 200, self.host_info())
        node = _find(namespace(self.live), path)
        if node is None:
            return self._reply(req, 404, {"error": f"no such address {path}"})
        if query:
            if query not in ATTRS:
                return self._reply(req, 400, {"error": f"unsupported query {query}"})
            if query not in node:
                return self._reply(req, 204, None)
            return self._reply(req, 200, {query: node[query]})
        self._reply(req, 200, node)

    @staticmethod
    def _reply(req, code: int, body) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        req.send_response(code)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def _advertise(self) -> None:
        try:
            from zeroconf import ServiceInfo, Zeroconf
        except ImportError:
            log.warning("OSCQuery is served on http://%s:%s but not advertised: pip install zeroconf", self.host,
                        self.port)
            return
        try:
            try:
                addrs = [socket.inet_aton(self.host)] if self.host not in ("0.0.0.0", "") else None
            except OSError:  # an IPv6 host: let zeroconf find the addresses
                addrs = None
            kw = {"addresses": addrs} if addrs else {}
            hostname = socket.gethostname().split(".")[0] or "paik"
            zc = Zeroconf()
            self._zc = zc
            for kind, port in (("_oscjson._tcp.local.", self.port), ("_osc._udp.local.", self.osc_port)):
                info = ServiceInfo(kind, f"{self.name} on {hostname}.{kind}", port=port,
                                   server=f"{hostname}.local.", properties={"path": PREFIX}, **kw)
                zc.register_service(info, allow_name_change=True)
            log.info("advertised OSCQuery on http://%s:%s over zeroconf", self.host, self.port)
        except Exception as e:  # no multicast in a sandbox, no network: the namespace still works
            log.warning("could not advertise OSCQuery over zeroconf (%s: %s); clients can still browse "
                        "http://%s:%s/", type(e).__name__, e, self.host, self.port)
