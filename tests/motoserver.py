"""moto's S3 server, single-threaded, for tests of conditional writes.

``rclone serve s3`` (the default test server) ignores ``If-None-Match``, so code that relies
on conditional writes (the registry's compare-and-swap) is tested against moto, which honours
them. moto's own launcher runs a threaded server, where two requests can interleave between
the condition check and the write; served from one thread, each request is atomic, as on S3.

    python -m tests.motoserver PORT
"""

from __future__ import annotations

import sys

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.server import MotoRequestHandler
from werkzeug.serving import run_simple


def main() -> None:
    port = int(sys.argv[1])
    app = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", port, app, threaded=False, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
