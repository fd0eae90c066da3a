"""Django's SQLite backend, told SQLite's real limit on query parameters.

Django 5.2 assumes 999 parameters per statement (SQLite's limit before 3.32), so
`bulk_create` of a 34-column delivery writes 29 rows per INSERT: 345 statements for a
10,000-recipient batch. The SQLite that Python is built with allows 32,766 (or what the build
set); Django 6.0 reads it from the connection (Django ticket #36143), and so does this
backend until Herald moves to that release.
"""

import sqlite3

from django.db.backends.sqlite3 import base, features
from django.utils.functional import cached_property


class DatabaseFeatures(features.DatabaseFeatures):
    @cached_property
    def max_query_params(self):
        self.connection.ensure_connection()
        return self.connection.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)


class DatabaseWrapper(base.DatabaseWrapper):
    features_class = DatabaseFeatures
