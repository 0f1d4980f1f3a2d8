"""ZeroMQ plumbing shared by broker, actors and learner: binding, timed receives
and a request client that survives a broker that is not there yet or restarts.

Only qrl/protocol/wire.py knows message bytes; this module moves frames.
"""

from __future__ import annotations

import collections
import itertools
import logging
import shutil
import socket as socket_module
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import zmq
import zmq.auth
from zmq.utils import z85

from qrl.protocol import wire

log = logging.getLogger("qrl.transport")


class PortInUse(RuntimeError):
    pass


class BrokerUnavailable(RuntimeError):
    pass


HEARTBEAT_IVL_MS = 2_000
HEARTBEAT_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class CurveKeys:
    """This process's CURVE identity: its key pair and, for clients, the broker's public key."""

    public: bytes
    secret: bytes
    server_public: bytes | None  # None: this process is the server (the broker)


# Set once per process by the CLI (`--keys DIR`) before any socket exists; forked actor
# workers inherit it. None: plain TCP.
_keys: CurveKeys | None = None

SERVER_KEY, CLIENT_KEY, AUTHORIZED = "server.key_secret", "client.key_secret", "authorized_clients"
ROLES = ("learner", "actor", "observer")
"""With keys, what a client may do is decided by its key's role (authorized_clients/ROLE/*.key):
learner: register, publish weights, sample, update priorities; actor: push segments, read the
spec and weights, claim ids, flush, report errors; observer: read stats. A key directly in
authorized_clients/ (the layout before roles) may do everything, as role "client"."""
SOCKET_ROLES = {
    "service": ("learner", "actor", "observer", "client"),  # each request is checked by the broker
    "ingest": ("actor", "client"),
    "weights_in": ("learner", "client"),
    "weights_out": ("learner", "actor", "client"),
}
"""Which roles may connect to each broker socket at all (the ZAP handler refuses the rest)."""


def use_keys(key_dir: str | Path | None, server: bool, role: str | tuple[str, ...] = "client") -> None:
    """Turn on CURVE encryption and authentication for every socket made from now on. A client
    uses ROLE.key_secret from the directory (the first found, given several roles; else
    client.key_secret: the layout before roles)."""
    global _keys
    if key_dir is None:
        _keys = None
        return
    key_dir = Path(key_dir)
    roles = (role,) if isinstance(role, str) else role
    role = roles[0]
    own = next((f"{r}.key_secret" for r in roles if (key_dir / f"{r}.key_secret").exists()), CLIENT_KEY)
    # A client machine needs only the broker's public key and its own role's pair, never the
    # broker's secret.
    for needed in (SERVER_KEY, AUTHORIZED) if server else ("server.key", own):
        if not (key_dir / needed).exists():
            missing = f"{role}.key_secret" if needed == CLIENT_KEY else needed
            raise FileNotFoundError(f"no {missing} in {key_dir} (create keys with: qrl keygen {key_dir})")
    if server:
        _keys = CurveKeys(*zmq.auth.load_certificate(key_dir / SERVER_KEY), None)
    else:
        server_public, _ = zmq.auth.load_certificate(key_dir / "server.key")
        _keys = CurveKeys(*zmq.auth.load_certificate(key_dir / own), server_public)


def _actor_pair(key_dir: str | Path) -> tuple[bytes, bytes]:
    """The actor role's key pair (public, secret; z85): the inference server's CURVE identity."""
    path = Path(key_dir) / "actor.key_secret"
    if not path.exists():
        raise FileNotFoundError(f"no actor.key_secret in {key_dir} (create keys with: qrl keygen {key_dir})")
    return zmq.auth.load_certificate(path)


def use_inference_keys(key_dir: str | Path) -> None:
    """Env-only actors: CURVE towards the inference server, which serves with the actor role's own
    key pair (so an actor machine needs nothing beyond the actor key it already has)."""
    global _keys
    public, secret = _actor_pair(key_dir)
    _keys = CurveKeys(public, secret, public)


def serve_inference_securely(ctx: zmq.Context, sock: zmq.Socket, key_dir: str | Path):
    """The inference server's ROUTER as a CURVE server with the actor role's key pair; a client gets in
    only with the actor key (or one authorized for the actor role). Call before binding; returns the
    authenticator (``refused`` counts refused connections)."""
    from zmq.auth.thread import ThreadAuthenticator

    public, secret = _actor_pair(key_dir)
    sock.curve_publickey, sock.curve_secretkey = public, secret
    sock.curve_server = True
    sock.zap_domain = b"inference"
    allowed = {public: "actor", **{k: r for k, r in authorized_roles(key_dir).items() if r == "actor"}}
    auth = ThreadAuthenticator(ctx)
    auth.refused = collections.Counter()
    auth.start()
    auth.configure_curve_callback("inference", _RoleCheck(allowed, ("actor",), auth.refused))
    return auth


def keygen(key_dir: str | Path) -> list[Path]:
    """Write the broker's key pair and one pair per role (learner, actor, observer), and
    authorize each role's public key under authorized_clients/ROLE/."""
    key_dir = Path(key_dir)
    key_dir.mkdir(parents=True, exist_ok=True)
    zmq.auth.create_certificates(key_dir, "server")
    for role in ROLES:
        (key_dir / AUTHORIZED / role).mkdir(parents=True, exist_ok=True)
        public, _ = zmq.auth.create_certificates(key_dir, role)
        shutil.copy(public, key_dir / AUTHORIZED / role / f"{role}.key")
    for secret in key_dir.glob("*.key_secret"):
        secret.chmod(0o600)
    return sorted(key_dir.rglob("*.key*"))


def authorized_roles(key_dir: str | Path) -> dict[bytes, str]:
    """Public key (z85) -> role, from KEY_DIR/authorized_clients/ROLE/*.key (and, as role
    "client", keys directly in authorized_clients/)."""
    base = Path(key_dir) / AUTHORIZED
    roles: dict[bytes, str] = {}
    for role, directory in [("client", base), *((r, base / r) for r in ROLES)]:
        if directory.is_dir():
            for public in zmq.auth.load_certificates(str(directory)):
                roles[public] = role
    return roles


class _RoleCheck:
    """The ZAP decision for one broker socket (domain): known key and a role allowed there."""

    def __init__(self, roles: dict[bytes, str], allowed: tuple[str, ...], refused: collections.Counter):
        self.roles, self.allowed, self.refused = roles, allowed, refused

    def callback(self, domain: str, key: bytes) -> bool:
        role = self.roles.get(key)
        if role in self.allowed:
            return True
        self.refused[f"{role or 'unknown_key'}@{domain}"] += 1  # read by the broker's stats
        return False


def start_authenticator(ctx: zmq.Context, key_dir: str | Path):
    """The broker's ZAP handler: a client gets in only with a key authorized for a role that may
    use that socket; its messages then carry the role as their User-Id (zmq.Frame.get). Returns
    the authenticator; ``auth.refused`` counts refused connections by role@socket."""
    from zmq.auth.thread import ThreadAuthenticator

    roles = authorized_roles(key_dir)

    class RoleAuthenticator(ThreadAuthenticator):
        def curve_user_id(self, client_public_key: bytes) -> str:
            return roles.get(z85.encode(client_public_key), "unknown")

    auth = RoleAuthenticator(ctx)
    auth.refused = collections.Counter()
    auth.start()
    for domain, allowed in SOCKET_ROLES.items():
        auth.configure_curve_callback(domain, _RoleCheck(roles, allowed, auth.refused))
    return auth


def socket(ctx: zmq.Context, kind: int, linger_ms: int = 0, heartbeats: bool = True) -> zmq.Socket:
    """A socket with ZMTP heartbeats, so a peer that dies without closing its connection
    (killed host, cut cable, SIGSTOP) is dropped after HEARTBEAT_TIMEOUT_MS and the
    connection is re-established when it comes back; a chosen LINGER; and CURVE when
    this process has keys.

    heartbeats=False for a socket whose input is held back on purpose (the broker's ingest
    under the rate limiter): libzmq 4.3.5 aborts the whole process (`Assertion failed:
    !_io_error (src/stream_engine_base.cpp:310)`) when a heartbeat fires on a connection
    whose input is stopped and whose peer has died (libzmq issues 3596, 3937; reproduced
    here by SIGKILLing a pushing actor; tests/test_heartbeat.py)."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
    if heartbeats:
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
    if _keys is not None:
        sock.curve_publickey, sock.curve_secretkey = _keys.public, _keys.secret
        if _keys.server_public is None:
            sock.curve_server = True
        else:
            sock.curve_serverkey = _keys.server_public
    return sock


def bind(sock: zmq.Socket, host: str, port: int) -> int:
    """Bind to host:port (port 0 picks a free one) and return the port actually bound."""
    try:
        if port == 0:
            return sock.bind_to_random_port(f"tcp://{host}")
        sock.bind(f"tcp://{host}:{port}")
        return port
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EADDRINUSE:
            raise PortInUse(f"port {port} on {host} is already in use") from None
        raise


def free_port_block(n: int = 4, host: str = "127.0.0.1") -> int:
    """A port p with p..p+n-1 free right now (the broker binds four consecutive ports), for
    launchers that must start a broker again on the same ports (tests, scripts/soak.py)."""
    for _ in range(100):
        with socket_module.socket() as s:
            s.bind((host, 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        holders = []
        try:
            for port in range(base, base + n):
                holders.append(socket_module.socket())
                holders[-1].bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for h in holders:
                h.close()
    raise RuntimeError("no block of free ports")


def send(sock: zmq.Socket, msg_type: str, meta: Mapping[str, Any] | None = None,
         arrays: Mapping[str, np.ndarray] | None = None, flags: int = 0) -> None:
    sock.send_multipart(wire.encode(msg_type, meta, arrays), flags=flags, copy=False)


def recv_frames(sock: zmq.Socket, timeout_ms: int) -> list | None:
    """The next multipart message as zmq.Frames, or None after timeout_ms."""
    if sock.poll(timeout_ms, zmq.POLLIN):
        return sock.recv_multipart(copy=False)
    return None


class AddressError(ValueError):
    """A broker address or listening host that cannot work; the message is one line for the user."""


def is_loopback(host: str) -> bool:
    """Whether host names this machine's loopback (a name that does not resolve counts as not)."""
    import ipaddress

    try:
        return ipaddress.ip_address(socket_module.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def split_address(address: str, what: str = "broker address", lowest_port: int = 1) -> tuple[str, int]:
    """'tcp://host:port' -> (host, port), checking the form and the port's range. The host stays
    as written (an IPv6 one in brackets), so f"tcp://{host}:{other_port}" is an address again.
    lowest_port 0: an address to bind, where port 0 means a free one."""
    host, sep, port = address[6:].rpartition(":") if address.startswith("tcp://") else ("", "", "")
    if not sep or not host:
        raise AddressError(f"{what} must look like tcp://HOST:PORT, got {address!r}")
    if not port.isdigit() or not lowest_port <= int(port) <= 65535:
        raise AddressError(f"{what} {address!r}: the port must be a number from {lowest_port} to 65535, not {port!r}")
    return host, int(port)


def check_address(address: str, what: str = "broker address", lowest_port: int = 1) -> tuple[str, int]:
    """split_address, and the host must resolve (a typo fails now, not as an endless wait).
    A host that resolves but does not answer is waited for: the broker may start later."""
    host, port = split_address(address, what, lowest_port)
    try:
        socket_module.getaddrinfo(host.strip("[]"), port, type=socket_module.SOCK_STREAM)
    except (socket_module.gaierror, UnicodeError):
        raise AddressError(f"{what} {address!r}: cannot resolve host {host!r}") from None
    return host, port


def write_address_file(path: str | Path, address: str, **more: Any) -> None:
    """What read_address_file reads: {"address": ..., "pid": ..., **more}, written atomically
    (write, then rename), so a reader never sees a half-written file."""
    import json
    import os

    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"address": address, "pid": os.getpid(), **more}, f)
    os.replace(tmp, path)


REPORT_EVERY_S = 4.0
"""Every wait says what it waits for after this long, and again as often."""


def read_address_file(path: str | Path, timeout_s: float = 60.0) -> str:
    """The broker's service address from the file `qrl broker --address-file` writes, waiting for
    the file to appear: roles started together with their broker (`qrl run`, `make cluster`) import
    torch while it binds, instead of after. The broker writes it atomically (write, then rename)."""
    import json

    start = last_report = time.monotonic()
    path = Path(path)
    while True:
        try:
            return str(json.loads(path.read_text())["address"])
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError) as exc:
            raise AddressError(f"{path} holds no address ({type(exc).__name__})") from None
        now = time.monotonic()
        if now - start > timeout_s:
            raise AddressError(f"no server wrote its address to {path} within {timeout_s:g} s")
        if now - last_report >= REPORT_EVERY_S:  # never a silent wait
            log.warning("waiting for a server to write its address to %s (%.0f s of %g)", path, now - start,
                        timeout_s)
            last_report = now
        time.sleep(0.02)


def refuses_plain_clients(ctx: zmq.Context, address: str, timeout_s: float = 2.0) -> bool:
    """Whether a server at address turns away a client without keys (it uses CURVE): the
    handshake fails, which a socket monitor sees (the request only times out). It fails on the
    mechanism when the client notices first, with no detail when the server hangs up first."""
    from zmq.utils.monitor import recv_monitor_message

    probe = ctx.socket(zmq.DEALER)
    probe.setsockopt(zmq.LINGER, 0)
    failed = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    monitor = probe.get_monitor_socket(failed | zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        probe.connect(address)
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not monitor.poll(int(left * 1000) + 1):
                break
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return False
            if event & failed:
                return True
        return False
    finally:
        probe.disable_monitor()
        monitor.close(linger=0)
        probe.close(linger=0)


def check_bind_host(host: str) -> None:
    """The broker can listen on ``host``: it resolves to an address of this machine (or is a wildcard)."""
    try:
        infos = socket_module.getaddrinfo(host, 0, type=socket_module.SOCK_STREAM)
    except (socket_module.gaierror, UnicodeError):
        raise AddressError(f"cannot listen on {host!r}: not a host name or address this machine can resolve") from None
    family, _, _, _, sockaddr = infos[0]
    with socket_module.socket(family, socket_module.SOCK_STREAM) as probe:
        try:
            probe.bind((sockaddr[0], 0))
        except OSError as exc:
            raise AddressError(f"cannot listen on {host!r} ({sockaddr[0]}): not an address of this machine's "
                               f"interfaces ({exc.strerror}); 0.0.0.0 listens on all of them") from None


class Client:
    """Request/reply to the broker's ROUTER over a DEALER socket (the 'lazy pirate'
    pattern): a request with no reply within ``timeout_s`` closes the socket,
    opens a fresh one and asks again, so a broker that starts late or restarts is
    picked up without the caller noticing. Replies carry the request id, so a
    stale reply from an abandoned attempt is recognised and dropped."""

    def __init__(self, ctx: zmq.Context, address: str, role: str, timeout_s: float = 2.0,
                 limits: wire.Limits = wire.DEFAULT_LIMITS):
        self.ctx, self.address, self.role = ctx, address, role
        self.timeout_s, self.limits = timeout_s, limits
        self._ids = itertools.count(1)
        self.sock = self._connect()

    def _connect(self) -> zmq.Socket:
        sock = socket(self.ctx, zmq.DEALER)
        sock.connect(self.address)
        return sock

    def reconnect(self) -> None:
        self.sock.close(linger=0)
        self.sock = self._connect()

    def _why_no_answer(self) -> str:
        """A hint for the waiting line: a server that uses keys never answers a client without them."""
        if _keys is None and refuses_plain_clients(self.ctx, self.address, timeout_s=1.0):
            return "; it turns away clients without keys: start this one with --keys DIR"
        return ""

    def request(self, msg_type: str, meta: Mapping[str, Any] | None = None,
                arrays: Mapping[str, np.ndarray] | None = None, *,
                wait_s: float | None = None, report: Callable[[str], None] | None = None,
                should_stop: Callable[[], bool] = lambda: False) -> wire.Message:
        """Send a request and return the reply, retrying until ``wait_s`` runs out
        (None: forever). ``report`` gets a periodic line while the broker is away."""
        start = last_report = time.monotonic()
        while True:
            req_id = next(self._ids)
            send(self.sock, msg_type, {**(meta or {}), "req": req_id}, arrays)
            deadline = time.monotonic() + self.timeout_s
            while (left := deadline - time.monotonic()) > 0:
                frames = recv_frames(self.sock, int(left * 1000) + 1)
                if frames is None:
                    break
                reply = wire.decode(frames, self.limits)
                if reply.meta.get("req") == req_id:
                    return reply
            if should_stop():
                raise BrokerUnavailable(f"{self.role}: stopped while waiting for the broker")
            now = time.monotonic()
            if wait_s is not None and now - start > wait_s:
                raise BrokerUnavailable(f"{self.role}: no broker answered at {self.address} for {wait_s:.0f} s")
            if report is not None and now - last_report >= REPORT_EVERY_S:
                report(f"{self.role}: waiting for the broker at {self.address} ({now - start:.0f} s)"
                       + self._why_no_answer())
                last_report = now
            self.reconnect()

    def close(self) -> None:
        self.sock.close(linger=0)
