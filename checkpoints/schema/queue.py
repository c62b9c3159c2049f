"""procrastinate's own schema (distributed mode): installed once, then its migrations applied on upgrade.

procrastinate ships its full schema (``schema.sql``) and one SQL file per schema change
(``sql/migrations/<version>_<n>_<name>.sql``), and leaves applying them to the project. We record the
files applied in ``journeys_queue_migrations``: a fresh install records every file its ``schema.sql``
already contains, and each later start applies, in order, the files a newer procrastinate brought.
A database whose schema was installed before this record existed was installed by procrastinate
:data:`FLOOR_VERSION` or later (the oldest release this project ever required), so the files up to that
version count as applied and any newer ones are applied.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
from procrastinate.schema import SchemaManager
from psycopg import sql
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Integer,
    String,
    TextualSelect,
    bindparam,
    func,
    literal_column,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB

from checkpoints.url import unavailable

FLOOR_VERSION = "03.10.00"  # pyproject: procrastinate>=3.10 since distributed mode exists
_SCHEMA_LOCK = 7_310_512_004
_RECORD = """
CREATE TABLE IF NOT EXISTS journeys_queue_migrations (
    name VARCHAR(200) PRIMARY KEY,
    applied_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now()
)
"""


# Deferring one job through procrastinate's own SQL API (``procrastinate_defer_jobs_v1``, the versioned
# function its ``defer`` calls, kept by its migrations), each field bound from ``job_<field>``; the one row it
# answers is the new job's ``id``. A run's INSERT takes it as a CTE (checkpoints.runs), so the run and its job
# are written by one statement: one round trip, where a transaction around procrastinate's ``defer`` took five.
DEFER_JOB: TextualSelect = (
    text(
        "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW(CAST(:job_queue AS varchar), CAST(:job_task AS varchar), "
        "CAST(:job_priority AS integer), CAST(:job_lock AS text), CAST(:job_queueing_lock AS text), "
        "CAST(:job_args AS jsonb), CAST(:job_scheduled_at AS timestamptz))::procrastinate_job_to_defer_v1])) AS id"
    )
    .bindparams(bindparam("job_args", type_=JSONB))
    .columns(id=BigInteger)
)

# Taking the next job for a worker through procrastinate's own SQL API (``procrastinate_fetch_job_v2``, what its
# ``fetch_job`` calls), bound from ``job_queues`` and ``job_worker``: one row, all NULL when no job is due. A
# worker claims the job's run in the same statement (checkpoints.runs): one commit where fetch and claim took two.
# ``others_waiting``: whether any other job of those queues was waiting (due or not, behind a lock or not) as the
# statement began; a worker that took the last one need not ask again before a NOTIFY says another came (RunJobs).
FETCH_JOB: TextualSelect = text(
    "SELECT id, status, task_name, priority, lock, queueing_lock, args, scheduled_at, queue_name, attempts, worker_id, "
    "EXISTS (SELECT 1 FROM procrastinate_jobs other WHERE other.status = 'todo' AND other.id <> fetched.id "
    "AND (CAST(:job_queues AS varchar[]) IS NULL OR other.queue_name = ANY(CAST(:job_queues AS varchar[])))) "
    "AS others_waiting "
    "FROM procrastinate_fetch_job_v2(CAST(:job_queues AS varchar[]), CAST(:job_worker AS bigint)) AS fetched"
).columns(
    id=BigInteger,
    status=String,
    task_name=String,
    priority=Integer,
    lock=String,
    queueing_lock=String,
    args=JSONB,
    scheduled_at=DateTime(timezone=True),
    queue_name=String,
    attempts=Integer,
    worker_id=BigInteger,
    others_waiting=Boolean,
)
# Ending a run's job as succeeded (and deleting it, as workers delete successful jobs) through procrastinate's
# ``procrastinate_finish_job_v1``, bound from ``p_job_id``: a column of the statement that finishes the run, so
# the run's final status and its job's end are one commit (checkpoints.runs).
END_JOB = func.procrastinate_finish_job_v1(
    bindparam("p_job_id", type_=BigInteger), literal_column("'succeeded'"), true()
).label("job_ended")

# Retrying the jobs of workers whose heartbeat stopped (they died mid-run), each as procrastinate's
# ``procrastinate_retry_job_v2`` retries a job, in one statement whose rows are the jobs retried (``id``,
# ``task_name``), bound from ``seconds`` (since the last heartbeat). A job is retried only if it is still under way
# under a stalled worker (or none) when its row is locked: a list read first and retried job by job reset a job that
# another reaper had retried and a live worker had taken meanwhile, which then ran twice at once. A job another
# reaper holds is left to it (SKIP LOCKED). The worker's test is a subplan (OFFSET 0), evaluated again on the row as
# locked, not joined with the rows read before.
RETRY_STALLED = """
WITH stalled AS (
    SELECT job.id, job.task_name, job.worker_id, job.args
      FROM procrastinate_jobs job
     WHERE job.status = 'doing'
       AND (job.worker_id IS NULL OR EXISTS (
            SELECT 1 FROM procrastinate_workers worker
             WHERE worker.id = job.worker_id
               AND worker.last_heartbeat < now() - make_interval(secs => %(seconds)s)
            OFFSET 0))
       FOR UPDATE OF job SKIP LOCKED
)
SELECT stalled.id, stalled.task_name, stalled.worker_id,
       stalled.args ->> 'run_id' AS run_id, stalled.args ->> 'instance_id' AS instance_id,
       (SELECT extract(epoch FROM now() - worker.last_heartbeat)::float
          FROM procrastinate_workers worker WHERE worker.id = stalled.worker_id) AS silent_s,
       procrastinate_retry_job_v2(stalled.id, now(), NULL, NULL, NULL)::text AS retried
  FROM stalled
"""

# An operator's retry handed to the workers (`journeys instances retry` where workers serve the database): the
# worker that ran it tells the command how it ended on this channel (notice: the command's reply key, a newline,
# then JSON), the command listening from before it deferred the retry's job.
RETRY_CHANNEL = "journeys_retries"
LISTEN_RETRIES = f"LISTEN {RETRY_CHANNEL}"
TELL_RETRIED = f"SELECT pg_notify('{RETRY_CHANNEL}', %(notice)s)"
# Whether procrastinate's schema is there (a database no worker ever served has none), then how many workers
# heart-beat within ``seconds``: workers serve the database.
QUEUE_INSTALLED = "SELECT to_regclass('procrastinate_workers') IS NOT NULL"
WORKERS_SERVING = "SELECT count(*) FROM procrastinate_workers WHERE last_heartbeat > now() - make_interval(secs => %s)"


def migrate_queue_schema(conninfo: str, *, migrations: Path | None = None) -> list[str]:
    """Install procrastinate's schema, or bring it up to date; the migration files applied now.

    Concurrent callers (API processes and workers starting together) wait on an advisory lock."""
    folder = migrations or Path(SchemaManager.get_migrations_path())
    available = sorted(path.name for path in folder.glob("*.sql"))
    try:
        connection = psycopg.connect(conninfo, autocommit=True)
    except psycopg.OperationalError as exc:
        raise unavailable(conninfo, exc) from exc
    with connection as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK,))
        try:
            conn.execute(_RECORD)
            applied = {row[0] for row in conn.execute("SELECT name FROM journeys_queue_migrations")}
            installed = conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL").fetchone()
            if not (installed and installed[0]):
                with conn.transaction():
                    conn.execute(SchemaManager.get_schema())
                    _record(conn, available)
                _unread_events_off(conn)
                return []
            if not applied:  # installed before this record existed
                known = [name for name in available if name[: len(FLOOR_VERSION)] <= FLOOR_VERSION]
                _record(conn, known)
                applied = set(known)
            done = []
            for name in available:
                if name not in applied:
                    with conn.transaction():
                        conn.execute((folder / name).read_text(encoding="utf-8"))
                        _record(conn, [name])
                    done.append(name)
            _unread_events_off(conn)  # a migration may have made them again
            return done
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK,))


# procrastinate's triggers that log each job's status changes as rows of procrastinate_events (deferred, started,
# succeeded, ...): rows only its remove_old_jobs task and its Django admin read, neither of which journeys uses (a
# run's own row says when it was created, claimed and finished). For every run they inserted two rows, each with a
# foreign-key check, and deleted both again with its job: kept off. Abort requests and schedules still log theirs.
UNREAD_EVENT_TRIGGERS = (
    "procrastinate_trigger_status_events_insert_v1",
    "procrastinate_trigger_status_events_update_v1",
)
_ENABLED_TRIGGERS = (
    "SELECT tgname FROM pg_trigger WHERE tgrelid = 'procrastinate_jobs'::regclass AND tgenabled <> 'D' "
    "AND tgname = ANY(%s)"
)


def _unread_events_off(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Disable :data:`UNREAD_EVENT_TRIGGERS` where they are on (a fresh install, a migration that made them again).
    A database user that does not own procrastinate's tables leaves them on: they cost time, not correctness."""
    for (name,) in conn.execute(_ENABLED_TRIGGERS, (list(UNREAD_EVENT_TRIGGERS),)).fetchall():
        try:
            conn.execute(sql.SQL("ALTER TABLE procrastinate_jobs DISABLE TRIGGER {}").format(sql.Identifier(str(name))))
        except psycopg.errors.InsufficientPrivilege:
            return


def _record(conn: psycopg.Connection[tuple[object, ...]], names: list[str]) -> None:
    with conn.cursor() as cursor:
        cursor.executemany("INSERT INTO journeys_queue_migrations (name) VALUES (%s)", [(name,) for name in names])
