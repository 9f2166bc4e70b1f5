"""A small synchronous client over the generated stubs.

``PMCLUSTER_COORDINATOR`` (or ``target``) is one coordinator or, for an HA pair, a
comma-separated list, as the CLI's ``--coordinator``; else, as the CLI does, the coordinator a
local ``pmcluster up`` runs (from ``PMCLUSTER_HOME`` or the default data dir), wherever it
listens, and an error while it is down; else, for a data dir ``up`` never used,
``127.0.0.1:7450``. A standby refuses
every call with ``UNAVAILABLE`` and names the leader in ``pmcluster-leader`` metadata: the client
dials that leader at once (no backoff) and sends the call again there, since a refused call was
not executed. A coordinator that cannot be reached, or refuses without naming a leader, sends the
call to the next URL of the list. A call that timed out is not sent again anywhere: the
coordinator may have executed it.

``http://`` is plaintext (what a local ``pmcluster up`` serves on loopback); ``https://`` is
mutual TLS with the cluster CA and a user certificate made by ``pmcluster certs``. A token from
``pmcluster token create`` rides in every call's ``authorization`` header.
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import grpc

from pmcluster.v1 import cluster_pb2, cluster_pb2_grpc, types_pb2

DEFAULT_COORDINATOR = "127.0.0.1:7450"

#: The metadata key of a standby's refusal that holds the leader's URL.
LEADER_METADATA = "pmcluster-leader"

#: Leader hints one call follows at most, so that two confused standbys naming each other cannot
#: bounce a call forever.
MAX_HOPS = 3

#: With several coordinators, how long a new connection may take to be ready before the next URL
#: is tried: a stopped coordinator accepts TCP connections but never answers them.
PROBE_TIMEOUT = 2.0


class ClientError(Exception):
    """A call the coordinator refused, with its gRPC status code and message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def _read(path: Optional[str], what: str) -> Optional[bytes]:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ClientError(grpc.StatusCode.INVALID_ARGUMENT, f"{what}: cannot read {path}: {e}") from e


def _normalize(url: str) -> str:
    """``host:port`` reads as ``http://host:port``, so that a hint and a list item compare equal."""
    url = url.strip().rstrip("/")
    if url.startswith("http://") or url.startswith("https://"):
        return url
    return f"http://{url}"


def parse_urls(target: str) -> List[str]:
    """A ``--coordinator`` value as its URLs, in order, each once."""
    urls: List[str] = []
    for n, item in enumerate(target.split(",")):
        if not item.strip():
            raise ClientError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"coordinator: item {n + 1} of {target!r} is empty; give one URL or several "
                "separated by commas",
            )
        url = _normalize(item)
        if url not in urls:
            urls.append(url)
    return urls


def leader_hint(error: grpc.RpcError) -> Optional[str]:
    """The leader a standby's refusal names, if it names one."""
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    # A refusal is a trailers-only response; some stacks surface it as initial metadata.
    for get in ("trailing_metadata", "initial_metadata"):
        try:
            pairs = getattr(error, get)() or ()
        except Exception:  # noqa: BLE001 - an error without that metadata has no hint
            continue
        for key, value in pairs:
            if key == LEADER_METADATA and value:
                return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


class _Route:
    """The order one call tries coordinators in: a leader a refusal named comes first, at once;
    otherwise the list, starting at the URL in use and wrapping around, each URL once."""

    def __init__(self, urls: List[str], first: Optional[str], hint: Optional[str]):
        start = urls.index(first) if first in urls else 0
        self.pending = urls[start:] + urls[:start]
        self.hint = hint
        self.hops = 0
        self.tried: List[Tuple[str, str]] = []

    def next_url(self) -> Optional[str]:
        if self.hint is not None:
            hint, self.hint = self.hint, None
            return hint
        while self.pending:
            url = self.pending.pop(0)
            if all(url != t for t, _ in self.tried):
                return url
        return None

    def failed(self, url: str, why: str) -> None:
        self.tried.append((url, why))

    def refused(self, url: str, why: str, hint: Optional[str]) -> None:
        if hint is not None:
            leader = _normalize(hint)
            # A standby naming itself has nothing to offer; the list goes on.
            if leader != url:
                if self.hops < MAX_HOPS:
                    self.hops += 1
                    self.hint = leader
                else:
                    why += f" (not followed: {MAX_HOPS} hints already)"
        self.failed(url, why)

    def give_up(self, last: Optional[grpc.RpcError]) -> ClientError:
        if len(self.tried) == 1 and last is not None:
            return ClientError(last.code(), last.details() or "")
        tried = "; ".join(f"{url}: {why}" for url, why in self.tried)
        return ClientError(grpc.StatusCode.UNAVAILABLE, f"no coordinator took the call; tried {tried}")


def _ready(channel: grpc.Channel, timeout: float) -> Optional[str]:
    """``None`` once the channel connects; else why not (refused, or no answer in time)."""
    state: Dict[str, grpc.ChannelConnectivity] = {}
    settled = threading.Event()

    def watch(s: grpc.ChannelConnectivity) -> None:
        if s in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE):
            state["last"] = s
            settled.set()

    channel.subscribe(watch, try_to_connect=True)
    try:
        settled.wait(timeout)
    finally:
        channel.unsubscribe(watch)
    last = state.get("last")
    if last == grpc.ChannelConnectivity.READY:
        return None
    if last == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
        return "cannot reach it"
    return f"it accepted the connection but did not answer within {timeout}s (stopped or overloaded)"


def _up_dir() -> Optional[str]:
    """The data dir of ``pmcluster up``: ``PMCLUSTER_HOME``, else ``$XDG_DATA_HOME/pmcluster``,
    else ``~/.local/share/pmcluster``."""
    home = os.environ.get("PMCLUSTER_HOME")
    if home:
        return home
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "pmcluster")
    user_home = os.environ.get("HOME")
    return os.path.join(user_home, ".local/share/pmcluster") if user_home else None


def _coordinator_running(d: str) -> bool:
    """Whether the data dir's pid file names a live ``pmcluster-coordinator`` (a stale file
    after a reboot names none)."""
    try:
        with open(os.path.join(d, "coordinator.pid")) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0", 1)[0]
    except (OSError, ValueError):
        return False
    return pid > 0 and os.path.basename(argv0) == b"pmcluster-coordinator"


def _recorded_url(d: str) -> Optional[str]:
    """The URL of the address ``up`` last gave the data dir's coordinator (``down`` keeps it);
    an unspecified one is dialled on loopback."""
    try:
        with open(os.path.join(d, "coordinator.listen")) as f:
            listen = f.read().strip()
    except OSError:
        return None
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        return None
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "[::]":
        host = "[::1]"
    return f"http://{host}:{port}"


def local_coordinator() -> Optional[str]:
    """The URL of the coordinator a local ``pmcluster up`` runs, or ``None`` when none runs."""
    d = _up_dir()
    url = _recorded_url(d) if d else None
    return url if d and url and _coordinator_running(d) else None


def _default_target() -> str:
    """Where a call goes when neither ``target`` nor ``PMCLUSTER_COORDINATOR`` says, as the CLI
    decides: the local ``up`` coordinator; the default address only for a data dir ``up`` never
    used, since while that data dir's coordinator is down another cluster may answer there."""
    d = _up_dir()
    url = _recorded_url(d) if d else None
    if d is None or url is None:
        return DEFAULT_COORDINATOR
    if not _coordinator_running(d):
        raise ClientError(
            grpc.StatusCode.UNAVAILABLE,
            f"the coordinator of {d} ({url}) is not running: start it with `pmcluster up`, "
            "or name the coordinator to talk to (connect(target) or PMCLUSTER_COORDINATOR)",
        )
    return url


def connect(
    target: Optional[str] = None,
    token: Optional[str] = None,
    ca: Optional[str] = None,
    cert: Optional[str] = None,
    key: Optional[str] = None,
    timeout: float = 10.0,
) -> "Client":
    """A client of the coordinator(s) ``target`` lists; arguments left out come from the CLI's
    environment variables. Connections are made at the first call. With no coordinator given, raises
    :class:`ClientError` (``UNAVAILABLE``) at once when the local ``up`` data dir's coordinator is
    down, rather than dial the default address."""
    target = target or os.environ.get("PMCLUSTER_COORDINATOR") or _default_target()
    token = token if token is not None else os.environ.get("PMCLUSTER_TOKEN")
    tls = (
        ca or os.environ.get("PMCLUSTER_CA"),
        cert or os.environ.get("PMCLUSTER_CERT"),
        key or os.environ.get("PMCLUSTER_KEY"),
    )
    return Client(parse_urls(target), token=token, timeout=timeout, tls=tls)


class Client:
    """The Cluster service's common calls, each sent to whichever coordinator of the list takes
    it. ``self.stub`` has every other call, on the coordinator in use (without failover)."""

    def __init__(
        self,
        urls: List[str],
        token: Optional[str] = None,
        timeout: float = 10.0,
        tls: Tuple[Optional[str], Optional[str], Optional[str]] = (None, None, None),
    ):
        if not urls:
            raise ClientError(grpc.StatusCode.INVALID_ARGUMENT, "no coordinator given")
        self.urls = urls
        self.timeout = timeout
        self.metadata = [("authorization", f"Bearer {token}")] if token else []
        self._tls = tls
        self._creds: Optional[grpc.ChannelCredentials] = None
        self._channels: Dict[str, grpc.Channel] = {}
        #: The coordinator calls go to first: the one that took the last call.
        self.current = urls[0]
        #: URLs the current one's connection was checked for, so that the probe runs once.
        self._probed: Dict[str, bool] = {}

    @property
    def stub(self) -> cluster_pb2_grpc.ClusterStub:
        return cluster_pb2_grpc.ClusterStub(self._channel(self.current))

    def _channel(self, url: str) -> grpc.Channel:
        channel = self._channels.get(url)
        if channel is None:
            if url.startswith("https://"):
                # Read on first use: a leader hint can be https:// though the list was not.
                if self._creds is None:
                    ca, cert, key = self._tls
                    self._creds = grpc.ssl_channel_credentials(
                        root_certificates=_read(ca, "ca"),
                        private_key=_read(key, "key"),
                        certificate_chain=_read(cert, "cert"),
                    )
                channel = grpc.secure_channel(url[len("https://") :], self._creds)
            else:
                channel = grpc.insecure_channel(url[len("http://") :])
            self._channels[url] = channel
        return channel

    def _drop(self, url: str) -> None:
        channel = self._channels.pop(url, None)
        self._probed.pop(url, None)
        if channel is not None:
            channel.close()

    def _stub_for(self, url: str, route: _Route) -> Optional[cluster_pb2_grpc.ClusterStub]:
        """The stub for ``url``; ``None`` (noted in ``route``) when, with several coordinators,
        its connection is not ready in time. One coordinator alone is not probed: its call's own
        error says what is wrong."""
        channel = self._channel(url)
        if len(self.urls) > 1 and not self._probed.get(url):
            why = _ready(channel, PROBE_TIMEOUT)
            if why is not None:
                self._drop(url)
                route.failed(url, why)
                return None
            self._probed[url] = True
        return cluster_pb2_grpc.ClusterStub(channel)

    def close(self) -> None:
        for url in list(self._channels):
            self._drop(url)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, name: str, request):
        """The unary call ``name`` with ``request``, on the leader."""
        route = _Route(self.urls, self.current, None)
        last: Optional[grpc.RpcError] = None
        while (url := route.next_url()) is not None:
            stub = self._stub_for(url, route)
            if stub is None:
                continue
            try:
                reply = getattr(stub, name)(request, timeout=self.timeout, metadata=self.metadata)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise ClientError(e.code(), e.details() or "") from e
                self._probed.pop(url, None)
                route.refused(url, e.details() or "unavailable", leader_hint(e))
                last = e
                continue
            self.current = url
            return reply
        raise route.give_up(last)

    def _open(self, open_stream: Callable[[cluster_pb2_grpc.ClusterStub], object]):
        """A server stream opened on the leader: it is followed as a unary call is, until a
        coordinator answers the opening with its headers rather than a refusal. A stream that
        breaks later is the caller's to open again."""
        route = _Route(self.urls, self.current, None)
        last: Optional[grpc.RpcError] = None
        while (url := route.next_url()) is not None:
            stub = self._stub_for(url, route)
            if stub is None:
                continue
            stream = open_stream(stub)
            # Returns at the response's headers, or at its end when it is a refusal.
            stream.initial_metadata()
            refused = _refusal(stream)
            if refused is None:
                self.current = url
                return stream
            self._probed.pop(url, None)
            route.refused(url, refused.details() or "unavailable", leader_hint(refused))
            last = refused
        raise route.give_up(last)

    def apps(self) -> List[types_pb2.App]:
        """Every app, across pages."""
        out, token = [], ""
        while True:
            reply = self._call("ListApps", cluster_pb2.ListAppsRequest(page_token=token))
            out.extend(reply.apps)
            token = reply.next_page_token
            if not token:
                return out

    def instances(self, app: str = "") -> List[types_pb2.Instance]:
        """Every instance (of one app, or of all), across pages. Processes of removed instances
        that are still ending come too, as stopping, with `removed` set, and instances that
        quarantined nodes hold, with `unmanaged` set."""
        out, token = [], ""
        while True:
            request = cluster_pb2.ListInstancesRequest(app=app, page_token=token)
            reply = self._call("ListInstances", request)
            out.extend(reply.instances)
            token = reply.next_page_token
            if not token:
                return out

    def nodes(self) -> List[types_pb2.Node]:
        return list(self._call("ListNodes", cluster_pb2.ListNodesRequest()).nodes)

    def scale(self, app: str, instances: int, relative: bool = False) -> cluster_pb2.ScaleReply:
        """Sets the app's desired count, or with ``relative`` adds ``instances`` to it (negative
        removes); returns the previous and the new count."""
        request = cluster_pb2.ScaleRequest(app=app, instances=instances, relative=relative)
        return self._call("Scale", request)

    def events(
        self, app: str = "", history: int = 20, follow: bool = True, timeout: Optional[float] = None
    ) -> Iterator[types_pb2.Event]:
        """Recent events, then (with follow) new ones as they happen; ``timeout`` bounds the
        whole stream in seconds (None: until the caller stops iterating). The call starts here,
        not at the first ``next``, so nothing that happens after this returns is missed."""
        request = cluster_pb2.WatchEventsRequest(app=app, history=history, no_follow=not follow)
        stream = self._open(
            lambda stub: stub.WatchEvents(request, timeout=timeout, metadata=self.metadata)
        )
        return _events(stream)


#: How long a stream whose headers were empty may take to show it already ended: grpc reports a
#: trailers-only refusal's metadata and its status as two events, the status a moment later.
_REFUSAL_GRACE = 0.05


def _refusal(stream) -> Optional[grpc.RpcError]:
    """The standby's refusal ``stream`` ended with, if it did (``None`` for a served stream)."""
    if not stream.done() and not stream.initial_metadata():
        ended = threading.Event()
        stream.add_done_callback(lambda _: ended.set())
        ended.wait(_REFUSAL_GRACE)
    if stream.done() and stream.code() == grpc.StatusCode.UNAVAILABLE:
        return stream
    return None


def _events(stream) -> Iterator[types_pb2.Event]:
    try:
        for event in stream:
            yield event
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return
        raise ClientError(e.code(), e.details()) from e
    finally:
        stream.cancel()


def state_name(state: int) -> str:
    """``INSTANCE_STATE_ONLINE`` -> ``online``."""
    return types_pb2.InstanceState.Name(state).removeprefix("INSTANCE_STATE_").lower()
