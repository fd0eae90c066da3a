"""Migration operations that change a busy table's indexes without stopping its writes.

On PostgreSQL an index is built and dropped CONCURRENTLY: the delivery table keeps taking
claims, outcomes and webhooks while it runs (a plain CREATE INDEX holds their writes until
it is done). Elsewhere (SQLite) the plain statement, which is quick there. A migration using
them must say `atomic = False`: PostgreSQL runs CONCURRENTLY outside a transaction.
"""

from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db.migrations import AddIndex, RemoveIndex


def _concurrently(schema_editor) -> bool:
    return schema_editor.connection.vendor == "postgresql"


class AddIndexWithoutLocking(AddIndexConcurrently):
    """AddIndex, CONCURRENTLY on PostgreSQL."""

    def describe(self):
        return AddIndex.describe(self) + " (concurrently on PostgreSQL)"

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        base = AddIndexConcurrently if _concurrently(schema_editor) else AddIndex
        base.database_forwards(self, app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        base = AddIndexConcurrently if _concurrently(schema_editor) else AddIndex
        base.database_backwards(self, app_label, schema_editor, from_state, to_state)


class RemoveIndexWithoutLocking(RemoveIndexConcurrently):
    """RemoveIndex, CONCURRENTLY on PostgreSQL."""

    def describe(self):
        return RemoveIndex.describe(self) + " (concurrently on PostgreSQL)"

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        base = RemoveIndexConcurrently if _concurrently(schema_editor) else RemoveIndex
        base.database_forwards(self, app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        base = RemoveIndexConcurrently if _concurrently(schema_editor) else RemoveIndex
        base.database_backwards(self, app_label, schema_editor, from_state, to_state)
