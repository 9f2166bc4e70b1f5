"""Python client for pmcluster's gRPC API.

The generated messages and stubs are in ``pmcluster.v1`` (``cluster_pb2``, ``cluster_pb2_grpc``
and the rest, one pair per proto file); :class:`Client` wraps the calls most scripts make.
"""

from pmcluster.client import Client, ClientError, connect

__all__ = ["Client", "ClientError", "connect"]
