"""Schema migrations on start, over SQLite and a real PostgreSQL server.

A database made by an older tuneship (revision 0001, with or without a version table)
is upgraded with its pipelines, stages and events intact; a database newer than the
code is refused; two controllers starting at once migrate a database once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from tuneship.common.errors import FailedPrecondition
from tuneship.controller.machine import Phase
from tuneship.controller.schema import (
    MIGRATION_LOCK_KEY,
    VERSION_TABLE,
    alembic_config,
    current_revision,
    head,
)
from tuneship.controller.state import Base, StateStore

pytestmark = pytest.mark.integration

OLD_PIPELINE = "old-abc123"


def make_revision_1_database(url: str, versioned: bool) -> None:
    """What tuneship before revision 0002 left behind: one pipeline half-way through
    training, written with that schema's columns only."""
    engine = create_engine(url)
    with engine.begin() as connection:
        config = alembic_config(connection)
        command.upgrade(config, "0001")
        if not versioned:  # made by create_all, before migrations existed
            connection.execute(text(f"DROP TABLE {VERSION_TABLE}"))
        connection.execute(
            text(
                "INSERT INTO pipelines VALUES (:id, 'old', 'running', '{}', 3, "
                "'{\"team\": \"a\"}', '{}', 1.0, 2.0, '', 4)"
            ),
            {"id": OLD_PIPELINE},
        )
        for position, (stage, phase, task) in enumerate(
            [
                ("train", "running", f"{OLD_PIPELINE}.train.1"),
                ("merge", "pending", ""),
                ("export", "pending", ""),
                ("publish", "pending", ""),
            ]
        ):
            connection.execute(
                text(
                    "INSERT INTO stages VALUES (:p, :name, :pos, :phase, :task, :attempts, 0, "
                    "'', '', 1.5, 0, 0, '{}', '{}')"
                ),
                {
                    "p": OLD_PIPELINE,
                    "name": stage,
                    "pos": position,
                    "phase": phase,
                    "task": task,
                    "attempts": 1 if task else 0,
                },
            )
        payloads = [{"message": "submitted"}, {"message": "train started (attempt 1)"}] + [
            {"step": n, "task": f"{OLD_PIPELINE}.train.1", "task_seq": n + 1} for n in (1, 2)
        ]
        for seq, payload in enumerate(payloads, start=1):
            connection.execute(
                text("INSERT INTO events VALUES (:p, :seq, 1.0, 'train', 'progress', :json)"),
                {"p": OLD_PIPELINE, "seq": seq, "json": json.dumps(payload)},
            )
    engine.dispose()


@pytest.mark.parametrize("versioned", [False, True], ids=["before-migrations", "at-0001"])
def test_a_revision_1_database_is_upgraded_and_stays_usable(state_url, versioned) -> None:
    make_revision_1_database(state_url, versioned)
    store = StateStore(state_url)
    try:
        assert store.revision == head() != "0001"
        view = store.get(OLD_PIPELINE)
        assert view.phase is Phase.RUNNING and view.priority == 3 and view.labels == {"team": "a"}
        assert view.stage("train").task_id == f"{OLD_PIPELINE}.train.1"
        assert [e.seq for e in store.events(OLD_PIPELINE)] == [1, 2, 3, 4]
        # Filled in from the old payloads: a re-attach skips what was recorded.
        assert store.last_task_seq(OLD_PIPELINE, f"{OLD_PIPELINE}.train.1") == 3
        assert store.ids_in_phase(Phase.RUNNING) == [OLD_PIPELINE]
        # ... and it carries on: new events continue the sequence, stages move on.
        seq = store.add_event(
            OLD_PIPELINE, "train", "progress", {"task": f"{OLD_PIPELINE}.train.1", "task_seq": 4}
        )
        assert seq == 5 and store.last_task_seq(OLD_PIPELINE, f"{OLD_PIPELINE}.train.1") == 4
        store.update_stage(OLD_PIPELINE, "train", phase=Phase.SUCCEEDED)
        assert store.get(make_new(store)).phase is Phase.PENDING
    finally:
        store.close()


def make_new(store: StateStore) -> str:
    return store.create("new", "{}", 0, {}, {})


def test_the_models_match_the_newest_migration(state_url) -> None:
    StateStore(state_url).close()
    engine = create_engine(state_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        differences = compare_metadata(context, Base.metadata)
        tables = set(inspect(connection).get_table_names())
    engine.dispose()
    assert differences == []  # a model change without a revision fails here
    assert tables == {"pipelines", "stages", "events", VERSION_TABLE}


def test_a_database_newer_than_the_code_is_refused(postgres) -> None:
    url = postgres.create_database()
    StateStore(url).close()
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0099'"))
    engine.dispose()
    with_password = url.replace("tuneship@", "tuneship:s3cret@")  # trust auth ignores it
    with pytest.raises(FailedPrecondition) as refused:
        StateStore(with_password)
    text_shown = refused.value.render()
    assert "schema revision '0099', which this tuneship does not know" in text_shown
    assert "upgrade this installation or image" in text_shown
    assert "tuneship:***@127.0.0.1" in text_shown and "s3cret" not in text_shown
    engine = create_engine(url)
    with engine.connect() as connection:
        assert current_revision(connection) == "0099"  # left as it was
    engine.dispose()


def test_serve_controller_refuses_a_newer_database_without_a_traceback(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    StateStore(url).close()
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0099'"))
    engine.dispose()
    env = {
        **os.environ,
        "TUNESHIP_STATE_URL": url,
        "TUNESHIP_STORE": f"local:{tmp_path / 'store'}",
        "TUNESHIP_WORKERS": "train=127.0.0.1:1,merge=127.0.0.1:1,export=127.0.0.1:1,"
        "publish=127.0.0.1:1",
        "TUNESHIP_METRICS_PORT": "",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tuneship.cli.main",
            "serve",
            "controller",
            "--port",
            "0",
            "--host",
            "127.0.0.1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "schema revision '0099'" in done.stderr and str(tmp_path) in done.stderr
    assert "hint: run the newer tuneship" in done.stderr


STARTER = """
import sys
from tuneship.controller.state import StateStore
store = StateStore(sys.argv[1])
store.create("from-" + sys.argv[2], "{}", 0, {}, {})
print(store.revision)
"""


@pytest.mark.timeout(120)
def test_controllers_starting_at_once_migrate_a_postgres_database_once(postgres) -> None:
    """Controllers starting together queue on the migration lock, then all find the
    database current. Holding that lock here lines them all up deterministically."""
    url = postgres.create_database()
    starters = 3
    with psycopg.connect(postgres.dsn(url.rsplit("/", 1)[1]), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", STARTER, url, str(n)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for n in range(starters)
        ]
        deadline = time.monotonic() + 60
        waiting = 0
        while waiting < starters:  # every one of them is queued on the lock
            assert time.monotonic() < deadline, f"{waiting} of {starters} wait for the lock"
            exited = [p for p in processes if p.poll() is not None]
            assert not exited, f"one started without the lock: {exited[0].communicate()}"
            time.sleep(0.1)
            waiting = holder.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ).fetchone()[0]
        assert not holder.execute("SELECT to_regclass('pipelines')").fetchone()[0]
        holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
        results = [process.communicate(timeout=60) for process in processes]
    for process, (out, err) in zip(processes, results, strict=True):
        assert process.returncode == 0, err
        assert out.strip() == head()
    store = StateStore(url)
    try:
        names = sorted(p.name for p in store.list_pipelines()[0])
        assert names == [f"from-{n}" for n in range(starters)]  # all on the same tables
    finally:
        store.close()


def test_the_newest_revision_downgrades_and_upgrades_again(state_url) -> None:
    """The documented way back (before running an older tuneship) keeps the data."""
    store = StateStore(state_url)
    pid = make_new(store)
    store.add_event(pid, "train", "progress", {"task": f"{pid}.train.1", "task_seq": 7})
    store.close()
    engine = create_engine(state_url)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0001")
    with engine.connect() as connection:
        assert current_revision(connection) == "0001"
        assert "task_seq" not in {c["name"] for c in inspect(connection).get_columns("events")}
    engine.dispose()
    store = StateStore(state_url)
    try:
        assert [e.seq for e in store.events(pid)] == [1, 2]
        assert store.last_task_seq(pid, f"{pid}.train.1") == 7  # filled in again
    finally:
        store.close()
