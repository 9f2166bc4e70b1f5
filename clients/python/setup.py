"""Builds the package, generating pmcluster.v1 from the repository's proto/ with grpcio-tools.

The stubs are generated at build time rather than committed, so they always match the protos of
the checkout they are installed from. Set PMCLUSTER_PROTO_DIR to build from another proto tree.
"""

import os
import pathlib

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent


def proto_dir() -> pathlib.Path:
    given = os.environ.get("PMCLUSTER_PROTO_DIR")
    root = pathlib.Path(given) if given else HERE.parent.parent / "proto"
    if not (root / "pmcluster" / "v1").is_dir():
        raise SystemExit(
            f"pmcluster: no protos in {root}/pmcluster/v1; install from a pmcluster checkout "
            "(pip install clients/python) or set PMCLUSTER_PROTO_DIR to its proto/ directory"
        )
    return root


class BuildWithStubs(build_py):
    def run(self):
        super().run()
        # Imported here: grpcio-tools is a build requirement only.
        import grpc_tools
        from grpc_tools import protoc

        root = proto_dir()
        protos = sorted(str(p.relative_to(root)) for p in (root / "pmcluster" / "v1").glob("*.proto"))
        well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
        out = pathlib.Path(self.build_lib)
        out.mkdir(parents=True, exist_ok=True)
        args = [
            "grpc_tools.protoc",
            f"-I{root}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("pmcluster: grpc_tools.protoc failed on " + " ".join(protos))


setup(cmdclass={"build_py": BuildWithStubs})
