"""Migration operations that change a busy table's indexes without stopping its writes.

On PostgreSQL an index is built and dropped CONCURRENTLY: the delivery table keeps taking
claims, outcomes and webhooks while it runs (a plain CREATE INDEX holds their writes until
it is done). Elsewhere (SQLite) the plain statement. A migration using them must say
`atomic = False`: PostgreSQL runs CONCURRENTLY outside a transaction. Each operation is one
statement, so a migration of them stopped halfway leaves every table whole (none may
rebuild a table, as an AlterField does on SQLite).
"""

from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db.migrations import AddIndex, RemoveIndex
from django.db.migrations.operations.base import Operation


def _concurrently(schema_editor) -> bool:
    return schema_editor.connection.vendor == "postgresql"


class _ConcurrentlyOnPostgreSQL:
    """An index operation run as `concurrent` on PostgreSQL and as `plain` elsewhere."""

    concurrent: type
    plain: type

    def describe(self):
        return self.plain.describe(self) + " (concurrently on PostgreSQL)"

    def _as(self, schema_editor) -> type:
        return self.concurrent if _concurrently(schema_editor) else self.plain

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        self._as(schema_editor).database_forwards(
            self, app_label, schema_editor, from_state, to_state
        )

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        self._as(schema_editor).database_backwards(
            self, app_label, schema_editor, from_state, to_state
        )


class AddIndexWithoutLocking(_ConcurrentlyOnPostgreSQL, AddIndexConcurrently):
    """AddIndex, CONCURRENTLY on PostgreSQL."""

    concurrent, plain = AddIndexConcurrently, AddIndex


class RemoveIndexWithoutLocking(_ConcurrentlyOnPostgreSQL, RemoveIndexConcurrently):
    """RemoveIndex, CONCURRENTLY on PostgreSQL."""

    concurrent, plain = RemoveIndexConcurrently, RemoveIndex


class DropForeignKeyIndex(Operation):
    """Drop the index Django made for a foreign key (its `db_index`), by the name Django gave
    it, CONCURRENTLY on PostgreSQL; back: made again. The database half of turning a foreign
    key's `db_index` off: an AlterField would re-add the key's constraint on PostgreSQL
    (checking every row under a lock that stops the table's writes) and rebuild the whole
    table on SQLite. Pair it with the AlterField's state in SeparateDatabaseAndState."""

    reversible = True
    atomic = False

    def __init__(self, model_name: str, name: str):
        self.model_name, self.name = model_name, name

    def deconstruct(self):
        return self.__class__.__qualname__, [], {"model_name": self.model_name, "name": self.name}

    def state_forwards(self, app_label, state):
        pass  # the state is the AlterField's

    def describe(self):
        return f"Drop the index of the foreign key {self.model_name}.{self.name}"

    def _sql(self, schema_editor, model) -> tuple[str, str]:
        column = model._meta.get_field(self.name).column
        index = schema_editor._create_index_name(model._meta.db_table, [column], suffix="")
        quote = schema_editor.quote_name
        how = "CONCURRENTLY " if _concurrently(schema_editor) else ""
        return (
            f"DROP INDEX {how}IF EXISTS {quote(index)}",
            f"CREATE INDEX {how}IF NOT EXISTS {quote(index)} "
            f"ON {quote(model._meta.db_table)} ({quote(column)})",
        )

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.execute(self._sql(schema_editor, model)[0])

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.execute(self._sql(schema_editor, model)[1])
