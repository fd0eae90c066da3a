"""A provider fake with latency, so a worker can be killed in the middle of a batch."""

import time

from notifications.channels.recording import EmailBackend as RecordingBackend


class EmailBackend(RecordingBackend):
    def send_messages(self, email_messages):
        time.sleep(0.05)
        return super().send_messages(email_messages)
