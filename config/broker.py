"""The embedded broker: kombu's filesystem transport, each message written whole before a
worker can see it.

kombu's own transport creates a message's file under its final name and then writes it; a
worker listing the folder in between took the empty file, could not decode it and stopped
("Unrecoverable error: JSONDecodeError"), and `make run` stopped web and beat with it. Here
the message is written under a name the readers skip and renamed once complete.

A worker on it polls the queue folder (every 0.1 s here, kombu's default being 1 s) and
stops waiting as soon as a shutdown was asked for: Celery's blocking loop (a transport with
no event loop) waits up to 2 s for a message before it checks for SIGTERM, and honcho
SIGKILLs what still runs 5 s after its SIGTERM (Ctrl-C of `make run`).
"""

import os
import uuid
from queue import Empty
from time import monotonic, sleep

from celery.worker import state as worker_state
from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".part"  # "<queue>.msg.part": not a message of any queue yet
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(filesystem.dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


def _stopping() -> bool:
    """A warm or cold shutdown was asked for in this (worker) process: Celery's flags hold
    the exit code (0 for a warm shutdown), None or False when none was."""
    return any(
        flag is not None and flag is not False
        for flag in (worker_state.should_stop, worker_state.should_terminate)
    )


class Transport(filesystem.Transport):
    Channel = Channel
    polling_interval = 0.1  # a broker_transport_options "polling_interval" overrides it

    def drain_events(self, connection, timeout=None):
        """kombu's wait for one message, also given up (as a timeout) once the worker is
        stopping, so its loop sees the shutdown within one polling interval."""
        started = monotonic()
        while True:
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                if _stopping() or (timeout is not None and monotonic() - started >= timeout):
                    raise TimeoutError from None  # socket.timeout
                sleep(min(self.polling_interval, timeout) if timeout else self.polling_interval)
