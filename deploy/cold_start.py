"""One Lambda cold start, measured: run by deploy/package.py under CPython 3.12 with ``-S``.

``python3.12 -S cold_start.py PACKAGE_DIR RUNTIME_DIR MODULE.FUNCTION EVENT_JSON`` imports the
handler from the unzipped package as Lambda's runtime does (PACKAGE_DIR is ``/var/task``,
RUNTIME_DIR stands in for ``/var/runtime`` and its boto3), invokes it once with the event and
prints one JSON line: the process's CPU seconds when the import was done and when the first
answer was. CPU time, not wall time, so that what else the build machine runs counts little.
``-S`` keeps this interpreter's site-packages out: a module the zip lacks fails here too.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from dataclasses import dataclass


@dataclass
class Context:
    """The context attributes a handler may read."""

    function_name: str = "fma-cold-start"
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:fma-cold-start"
    aws_request_id: str = "00000000-0000-4000-8000-000000000000"
    memory_limit_in_mb: int = 1024

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def main() -> None:
    package_dir, runtime_dir, handler_path, event = sys.argv[1:5]
    sys.path[:0] = [package_dir, runtime_dir]
    os.chdir(package_dir)
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the handler prints goes to stderr; stdout keeps the measurement
    module_name, function_name = handler_path.rsplit(".", 1)
    handler = getattr(importlib.import_module(module_name), function_name)
    imported = time.process_time()
    handler(json.loads(event), Context())
    answered = time.process_time()
    answers.write(json.dumps({"import_seconds": imported, "total_seconds": answered}) + "\n")
    answers.flush()


if __name__ == "__main__":
    main()
