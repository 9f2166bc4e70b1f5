"""A Python app that receives `pmcluster send` messages.

The agent names a unix socket path in PMCLUSTER_MESSAGES; the app listens there, and the agent
connects once per message, writes it as one line and closes. Run it under pmcluster:

    pmcluster start "python3 app.py" --name py-msg --instances 2
    pmcluster send py-msg 'hello all'               # broadcast
    pmcluster send py-msg --instance 1 'hello one'  # unicast
    pmcluster logs py-msg
"""

import os
import signal
import socket
import sys


def on_message(index, text):
    print(f"python instance {index} got message: {text}", flush=True)


def main():
    path = os.environ.get("PMCLUSTER_MESSAGES")
    index = os.environ.get("PMCLUSTER_INSTANCE_ID", "-")
    if not path:
        print("PMCLUSTER_MESSAGES is not set: run me under a pmcluster agent", file=sys.stderr)
        return 1
    # A socket file left by a previous process would make bind fail.
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen()
        print(f"python instance {index} listening for messages", flush=True)
        while True:
            conn, _ = server.accept()
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
            for line in data.decode("utf-8", "replace").split("\n"):
                if line:
                    on_message(index, line)


if __name__ == "__main__":
    sys.exit(main())
