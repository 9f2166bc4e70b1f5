"""A small synchronous client over the generated stubs.

It dials one coordinator: ``PMCLUSTER_COORDINATOR`` (its first entry when it lists an HA pair),
else ``127.0.0.1:7450``, as the CLI does. ``http://`` is plaintext (what a local ``pmcluster up``
serves on loopback); ``https://`` is mutual TLS with the cluster CA and a user certificate made
by ``pmcluster certs``. A token from ``pmcluster token create`` rides in every call's
``authorization`` header.
"""

from __future__ import annotations

import os
from typing import Iterator, List, Optional

import grpc

from pmcluster.v1 import cluster_pb2, cluster_pb2_grpc, types_pb2

DEFAULT_COORDINATOR = "127.0.0.1:7450"


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


def connect(
    target: Optional[str] = None,
    token: Optional[str] = None,
    ca: Optional[str] = None,
    cert: Optional[str] = None,
    key: Optional[str] = None,
    timeout: float = 10.0,
) -> "Client":
    """Dials a coordinator; arguments left out come from the CLI's environment variables."""
    target = target or os.environ.get("PMCLUSTER_COORDINATOR") or DEFAULT_COORDINATOR
    target = target.split(",")[0].strip()
    token = token if token is not None else os.environ.get("PMCLUSTER_TOKEN")
    if target.startswith("https://"):
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(ca or os.environ.get("PMCLUSTER_CA"), "ca"),
            private_key=_read(key or os.environ.get("PMCLUSTER_KEY"), "key"),
            certificate_chain=_read(cert or os.environ.get("PMCLUSTER_CERT"), "cert"),
        )
        channel = grpc.secure_channel(target[len("https://") :], creds)
    else:
        channel = grpc.insecure_channel(target.removeprefix("http://"))
    return Client(channel, token=token, timeout=timeout)


class Client:
    """The Cluster service's common calls; ``self.stub`` has every other one."""

    def __init__(self, channel: grpc.Channel, token: Optional[str] = None, timeout: float = 10.0):
        self.channel = channel
        self.stub = cluster_pb2_grpc.ClusterStub(channel)
        self.timeout = timeout
        self.metadata = [("authorization", f"Bearer {token}")] if token else []

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as e:
            raise ClientError(e.code(), e.details()) from e

    def apps(self) -> List[types_pb2.App]:
        """Every app, across pages."""
        out, token = [], ""
        while True:
            reply = self._call(self.stub.ListApps, cluster_pb2.ListAppsRequest(page_token=token))
            out.extend(reply.apps)
            token = reply.next_page_token
            if not token:
                return out

    def instances(self, app: str = "") -> List[types_pb2.Instance]:
        """Every instance (of one app, or of all), across pages."""
        out, token = [], ""
        while True:
            request = cluster_pb2.ListInstancesRequest(app=app, page_token=token)
            reply = self._call(self.stub.ListInstances, request)
            out.extend(reply.instances)
            token = reply.next_page_token
            if not token:
                return out

    def nodes(self) -> List[types_pb2.Node]:
        return list(self._call(self.stub.ListNodes, cluster_pb2.ListNodesRequest()).nodes)

    def scale(self, app: str, instances: int) -> cluster_pb2.ScaleReply:
        """Sets the app's desired count; returns the previous and the new one."""
        return self._call(self.stub.Scale, cluster_pb2.ScaleRequest(app=app, instances=instances))

    def events(
        self, app: str = "", history: int = 20, follow: bool = True, timeout: Optional[float] = None
    ) -> Iterator[types_pb2.Event]:
        """Recent events, then (with follow) new ones as they happen; ``timeout`` bounds the
        whole stream in seconds (None: until the caller stops iterating). The call starts here,
        not at the first ``next``, so nothing that happens after this returns is missed."""
        request = cluster_pb2.WatchEventsRequest(app=app, history=history, no_follow=not follow)
        stream = self.stub.WatchEvents(request, timeout=timeout, metadata=self.metadata)
        return _events(stream)


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
