"""The host name a scale-out test process reports, so two workers on one machine look like two machines.

``[core] hostname_callable`` points here in the processes the Celery fixture starts: each worker is
started with its own ``ZOHOBULK_WORKER_HOSTNAME``, which the task instances it runs then carry as their
``hostname`` (what tests read to tell which worker ran a task). Everything else keeps the real name.
This file avoids the two words the scheduler's file discovery looks for, so it is never parsed as a
workflow file.
"""

from __future__ import annotations

import os
import socket


def worker_hostname() -> str:
    """``$ZOHOBULK_WORKER_HOSTNAME`` when set, else the fully qualified host name."""
    return os.environ.get("ZOHOBULK_WORKER_HOSTNAME") or socket.getfqdn()
