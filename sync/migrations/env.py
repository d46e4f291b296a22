"""Alembic environment for the state store.

healthsync runs migrations itself (`StateStore.migrate`, on every open), on the connection it
already holds, so there is no alembic.ini and no URL here: the caller passes its connection in
`config.attributes["connection"]`. `render_as_batch` lets revisions alter columns on SQLite,
which cannot ALTER most things in place.
"""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
