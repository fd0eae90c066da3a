"""The worker's pool on the embedded broker: its shared task pipe's locks, made safe to
SIGTERM.

On a broker without an event loop (kombu's filesystem transport, the embedded default)
Celery's prefork pool is billiard's blocking Pool: its child processes read tasks from one
pipe, each holding a process-shared lock while it waits. billiard's Lock is a Python
wrapper, `__enter__` calling the C semaphore's `__enter__`. `honcho` (make run, a
restart) sends SIGTERM to the worker's whole process group: the child holding the lock
leaves it, the other child's wait for it succeeds, and the signal handler's SystemExit is
then raised in the wrapper's `__enter__`, after the acquire and before the `with` block,
so the lock is never released. The main process, at exit, finalises the pool by taking
that lock (billiard's `Pool._help_stuff_finish`) and waited for ever: Ctrl-C of `make run`
hung until kill -9 (pool processes "exited with signal 15", the main one still alive).

Here the queue enters the C semaphore itself: between its acquire and the `with` block
there is no Python code where a signal handler could run, and leaving the block releases it.
"""

from billiard import queues


def _get_payload(self):
    with self._rlock._semlock:
        return self._reader.recv_bytes()


def _send_payload(self, value):
    if self._wlock is None:  # win32: writes to a message pipe are atomic
        self._writer.send_bytes(value)
        return
    with self._wlock._semlock:
        self._writer.send_bytes(value)


def protect_queue_locks() -> None:
    queues.SimpleQueue.get_payload = _get_payload
    queues.SimpleQueue.send_payload = _send_payload
