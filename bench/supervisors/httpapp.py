#!/usr/bin/env python3
"""A small HTTP app as users run them under a process manager: the standard library's server,
answering every GET with 200, on the port in $PORT (127.0.0.1 only). The bench's second app,
beside the compiled test app: its start costs what an interpreter's start costs."""

import http.server
import os


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(os.environ["PORT"])
    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
