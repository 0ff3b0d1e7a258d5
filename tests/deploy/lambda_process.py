"""A stand-in for Lambda's Python runtime, run as a child process by the deploy tests.

``python -S lambda_process.py PACKAGE_DIR COMPILED_DIR MODULE.FUNCTION`` imports the handler
the way Lambda does, from the unzipped package (``/var/task`` on Lambda), then reads one JSON
event per line on stdin and answers each with one JSON line on stdout: ``{"result": ...}`` or
``{"error": ..., "message": ...}``.

``-S`` keeps this interpreter's site-packages off ``sys.path``: everything is imported from
the package, so a module the zip lacks fails here as it would on Lambda. The one exception
is COMPILED_DIR, which holds this machine's builds of the packages whose cp312 binaries the
zip carries (same versions, see tests/deploy/conftest.py). Whatever the handler prints goes to
stderr, which keeps stdout for the answers.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from dataclasses import dataclass


@dataclass
class LambdaContext:
    """The context attributes a handler may read."""

    function_name: str
    invoked_function_arn: str
    aws_request_id: str = "8f5c2d9e-2a6b-4c1e-9d3f-0b7a6e5d4c3b"
    memory_limit_in_mb: int = 1024

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def main() -> None:
    package_dir, compiled_dir, handler_path = sys.argv[1:4]
    sys.path[:0] = [package_dir, compiled_dir]
    os.chdir(package_dir)  # Lambda starts the handler in /var/task
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the handler's prints and logs go to stderr

    module_name, function_name = handler_path.rsplit(".", 1)
    handler = getattr(importlib.import_module(module_name), function_name)
    name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "fma-test")
    context = LambdaContext(name, f"arn:aws:lambda:us-east-1:123456789012:function:{name}")
    for line in sys.stdin:
        try:
            answer = {"result": handler(json.loads(line), context)}
        except Exception as error:
            traceback.print_exc()
            answer = {"error": type(error).__name__, "message": str(error)}
        answers.write(json.dumps(answer, default=str) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
