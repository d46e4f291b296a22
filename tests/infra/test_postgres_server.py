"""The suite's own PostgreSQL server (tests/postgres_server.py) is a real, writable server."""

from sqlalchemy import create_engine, text


def test_given_the_session_server_when_connecting_then_it_is_a_real_postgresql_that_keeps_rows(postgres_url):
    engine = create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            version = conn.execute(text("select version()")).scalar()
            conn.execute(text("create table if not exists probe (id int primary key, name text)"))
            conn.execute(text("delete from probe"))
            conn.execute(text("insert into probe values (1, 'a'), (2, 'b')"))
        with engine.connect() as conn:
            rows = conn.execute(text("select id, name from probe order by id")).all()
    finally:
        engine.dispose()
    assert version.startswith("PostgreSQL")
    assert [tuple(r) for r in rows] == [(1, "a"), (2, "b")]
    assert postgres_url.startswith("postgresql+psycopg://") and "@127.0.0.1:" in postgres_url


def test_given_a_fresh_database_when_a_test_creates_tables_then_no_other_database_sees_them(fresh_postgres_url, postgres_url):
    fresh = create_engine(fresh_postgres_url)
    shared = create_engine(postgres_url)
    try:
        with fresh.begin() as conn:
            conn.execute(text("create table only_here (id int)"))
        with shared.connect() as conn:
            seen = conn.execute(text("select count(*) from information_schema.tables where table_name = 'only_here'")).scalar()
    finally:
        fresh.dispose()
        shared.dispose()
    assert seen == 0
