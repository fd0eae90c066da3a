"""Files chosen on the batch launch form, kept between the form and its confirmation page
(browsers do not post a file twice). A confirmed launch takes them and deletes them; a
launch left on its confirmation page leaves them, and `sweep_staged` (hourly, on beat)
deletes them a day later."""

import contextlib
import mimetypes
import os
import re
import uuid
from datetime import datetime, timedelta

from django.core.files import File
from django.core.files.storage import default_storage
from django.utils.text import get_valid_filename

STAGED = "batch-staging"
STAGED_NAME = re.compile(rf"^{STAGED}/[0-9a-f]{{32}}/(?!\.\.?$)[^/\\]+$")
# A confirmation page left open longer than this is abandoned: its files go.
STAGED_LIFETIME = timedelta(hours=24)


def stage_attachments(uploads) -> list[str]:
    """Keep the files chosen before the confirmation page (browsers do not post a file
    twice); the confirmed launch picks them up by name."""
    names = []
    for upload in uploads:
        name = f"{STAGED}/{uuid.uuid4().hex}/{get_valid_filename(upload.name) or 'file'}"
        names.append(default_storage.save(name, upload))
    return names


def is_staged(name: str) -> bool:
    """A name stage_attachments wrote whose file is still there."""
    return bool(STAGED_NAME.match(name)) and default_storage.exists(name)


def staged_attachments(names) -> list[File]:
    files = []
    for name in names:
        if not STAGED_NAME.match(name) or not default_storage.exists(name):
            continue  # only what stage_attachments wrote
        staged = File(default_storage.open(name), name=name.rsplit("/", 1)[-1])
        staged.content_type = mimetypes.guess_type(staged.name)[0] or ""
        files.append(staged)
    return files


def drop_staged(names) -> None:
    for name in names:
        if STAGED_NAME.match(name) and default_storage.exists(name):
            default_storage.delete(name)


def sweep_staged(*, now: datetime, older_than: timedelta = STAGED_LIFETIME) -> int:
    """Delete the staged files of launches never confirmed, `older_than` after they were
    staged; returns how many files went."""
    try:
        folders, _ = default_storage.listdir(STAGED)
    except FileNotFoundError:
        return 0
    removed = 0
    for folder in folders:
        _, files = default_storage.listdir(f"{STAGED}/{folder}")
        old = [
            name
            for name in (f"{STAGED}/{folder}/{filename}" for filename in files)
            if STAGED_NAME.match(name)
            and default_storage.get_modified_time(name) <= now - older_than
        ]
        for name in old:
            default_storage.delete(name)
        if old:  # (a folder just made for a new file is left alone)
            _remove_if_empty(f"{STAGED}/{folder}")
        removed += len(old)
    return removed


def _remove_if_empty(folder: str) -> None:
    """The emptied folder too, where the storage is a local folder."""
    with contextlib.suppress(NotImplementedError, OSError):  # not local, or not empty
        os.rmdir(default_storage.path(folder))
