"""Lists an app's instances, scales it, and follows the cluster's events until the new count is
online (or --timeout passes).

    python examples/scale_and_watch.py web 6
    PMCLUSTER_COORDINATOR=http://10.0.0.1:7450,http://10.0.0.2:7450 \
      python examples/scale_and_watch.py web 6     # an HA pair: whichever leads takes the calls
    PMCLUSTER_COORDINATOR=https://coord:7450 PMCLUSTER_CA=pki/ca.pem \
      PMCLUSTER_CERT=pki/alice.pem PMCLUSTER_KEY=pki/alice-key.pem \
      python examples/scale_and_watch.py web 6
"""

import argparse
import sys
import time

from pmcluster import ClientError, connect
from pmcluster.client import state_name


def show(client, app):
    for i in sorted(client.instances(app), key=lambda i: i.index):
        print(f"  {i.app}[{i.index}] {state_name(i.state):<9} node={i.node or '-'} pid={i.pid} port={i.port}")


def count_online(client, app):
    return sum(1 for i in client.instances(app) if state_name(i.state) == "online")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app")
    parser.add_argument("instances", type=int)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")
    args = parser.parse_args()

    try:
        with connect() as client:
            print(f"{args.app} before:")
            show(client, args.app)
            # Follow first, then scale: the events say when something changed, the list says
            # where it stands.
            events = client.events(app=args.app, history=0, timeout=args.timeout)
            reply = client.scale(args.app, args.instances)
            print(f"scaled {args.app} from {reply.previous} to {reply.instances}")
            deadline = time.monotonic() + args.timeout
            while count_online(client, args.app) != args.instances and time.monotonic() < deadline:
                event = next(events, None)
                if event is None:
                    break
                index = f"[{event.index}]" if event.HasField("index") else ""
                print(f"event {event.kind} {event.app}{index} {event.message}")
            events.close()
            print(f"{args.app} after:")
            show(client, args.app)
            online = count_online(client, args.app)
            if online != args.instances:
                print(f"only {online} of {args.instances} online after {args.timeout}s", file=sys.stderr)
                return 1
            return 0
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
