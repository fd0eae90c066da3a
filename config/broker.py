"""The embedded broker: kombu's filesystem transport, each message written whole before a
worker can see it.

kombu's own transport creates a message's file under its final name and then writes it; a
worker listing the folder in between took the empty file, could not decode it and stopped
("Unrecoverable error: JSONDecodeError"), and `make run` stopped web and beat with it. Here
the message is written under a name the readers skip and renamed once complete.
"""

import os
import uuid
from time import monotonic

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


class Transport(filesystem.Transport):
    Channel = Channel
