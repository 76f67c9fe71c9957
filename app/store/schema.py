"""The database schema as numbered migrations. Never edit a released migration: append one."""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: snapshots, results and their history, classification, personnel, evidence, exceptions, audit
    """
    CREATE TABLE snapshots (
        key TEXT PRIMARY KEY,
        workspace TEXT NOT NULL,
        kind TEXT NOT NULL,
        content TEXT,
        hash TEXT,
        fetched_at TEXT,
        stale_since TEXT,
        error TEXT
    );
    CREATE INDEX snapshots_ws_kind ON snapshots(workspace, kind);
    CREATE TABLE results (
        check_id TEXT NOT NULL,
        subject_key TEXT NOT NULL,
        workspace TEXT NOT NULL,
        subject_type TEXT NOT NULL,
        subject TEXT NOT NULL,
        subject_uuid TEXT,
        subject_name TEXT,
        severity TEXT NOT NULL,
        status TEXT NOT NULL,
        message TEXT NOT NULL,
        details TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        first_seen TEXT NOT NULL,
        last_changed TEXT NOT NULL,
        stale_since TEXT,
        PRIMARY KEY (check_id, subject_key)
    );
    CREATE INDEX results_ws ON results(workspace, check_id, status);
    CREATE TABLE result_history (
        id INTEGER PRIMARY KEY,
        check_id TEXT NOT NULL,
        subject_key TEXT NOT NULL,
        workspace TEXT NOT NULL,
        subject TEXT NOT NULL,
        at TEXT NOT NULL,
        old_status TEXT,
        new_status TEXT NOT NULL,
        message TEXT NOT NULL,
        details TEXT NOT NULL,
        cause TEXT
    );
    CREATE INDEX result_history_subject ON result_history(check_id, subject_key, id);
    CREATE INDEX result_history_ws ON result_history(workspace, id);
    CREATE TABLE repo_classes (
        repo_uuid TEXT PRIMARY KEY,
        workspace TEXT NOT NULL,
        full_name TEXT NOT NULL,
        class TEXT NOT NULL CHECK (class IN ('production', 'non-production')),
        set_by TEXT NOT NULL,
        set_at TEXT NOT NULL
    );
    CREATE TABLE class_rules (
        id INTEGER PRIMARY KEY,
        position INTEGER NOT NULL,
        workspace TEXT,
        project_key TEXT,
        name_glob TEXT,
        class TEXT NOT NULL CHECK (class IN ('production', 'non-production')),
        created_at TEXT NOT NULL,
        CHECK ((project_key IS NULL) <> (name_glob IS NULL))
    );
    CREATE TABLE personnel (
        id INTEGER PRIMARY KEY,
        email TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('employee', 'contractor', 'service-account', 'external')),
        status TEXT NOT NULL CHECK (status IN ('active', 'offboarded')),
        offboarded_on TEXT,
        bitbucket_account_id TEXT,
        owner TEXT,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX personnel_account ON personnel(bitbucket_account_id);
    CREATE TABLE evidence (
        id INTEGER PRIMARY KEY,
        sha256 TEXT NOT NULL,
        check_id TEXT NOT NULL,
        workspace TEXT NOT NULL,
        member TEXT,
        filename TEXT NOT NULL,
        media_type TEXT NOT NULL,
        size INTEGER NOT NULL,
        uploaded_by TEXT NOT NULL,
        uploaded_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        covered_members TEXT,
        revoked_at TEXT
    );
    CREATE TABLE exceptions (
        id INTEGER PRIMARY KEY,
        check_id TEXT NOT NULL,
        subject TEXT NOT NULL,
        owner TEXT NOT NULL,
        reason TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        revoked_at TEXT
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        object_type TEXT NOT NULL,
        object_id TEXT NOT NULL,
        details TEXT NOT NULL
    );
    """,
]

MIGRATIONS.append(
    # 2: connections, the event log, locks
    """
    CREATE TABLE connections (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('token', 'oauth')),
        workspaces TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'active',
        status_reason TEXT,
        tokens BLOB,
        token_expires_at TEXT,
        scopes TEXT,
        user TEXT,
        webhook_secret BLOB,
        webhook_secret_previous BLOB,
        hooks TEXT NOT NULL DEFAULT '[]',
        last_delivery_at TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        connection_id TEXT NOT NULL,
        source TEXT NOT NULL,
        event_key TEXT NOT NULL,
        request_uuid TEXT,
        hook_uuid TEXT,
        attempt INTEGER,
        body_hash TEXT,
        workspace TEXT,
        payload TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'dead', 'ignored')),
        tries INTEGER NOT NULL DEFAULT 0,
        lease_until REAL,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        received_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        error TEXT,
        caused TEXT,
        changed_at REAL NOT NULL
    );
    CREATE UNIQUE INDEX events_request ON events(connection_id, request_uuid) WHERE request_uuid IS NOT NULL
        AND request_uuid <> '';
    CREATE UNIQUE INDEX events_body ON events(connection_id, hook_uuid, body_hash) WHERE body_hash IS NOT NULL;
    CREATE INDEX events_state ON events(state, next_attempt_at, id);
    CREATE INDEX events_changed ON events(changed_at);
    CREATE TABLE locks (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """
)

MIGRATIONS.append(
    # 3: alert outbox and groups, OAuth states, member marks
    """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        channel TEXT NOT NULL,
        group_key TEXT NOT NULL,
        idempotency_key TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'failed', 'dead')),
        tries INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        sent_at REAL,
        error TEXT
    );
    CREATE INDEX outbox_pending ON outbox(state, group_key, created_at);
    CREATE TABLE alert_groups (
        group_key TEXT PRIMARY KEY,
        last_sent_at REAL NOT NULL
    );
    CREATE TABLE oauth_states (
        state_hash TEXT PRIMARY KEY,
        session_hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        used_at REAL
    );
    CREATE TABLE member_marks (
        workspace TEXT NOT NULL,
        account_id TEXT NOT NULL,
        mark TEXT NOT NULL CHECK (mark IN ('service-account', 'external')),
        owner TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (workspace, account_id)
    );
    """
)

MIGRATIONS.append(
    # 4: a member can belong to several workspaces: results are keyed by workspace too
    """
    CREATE TABLE results_v4 (
        check_id TEXT NOT NULL,
        subject_key TEXT NOT NULL,
        workspace TEXT NOT NULL,
        subject_type TEXT NOT NULL,
        subject TEXT NOT NULL,
        subject_uuid TEXT,
        subject_name TEXT,
        severity TEXT NOT NULL,
        status TEXT NOT NULL,
        message TEXT NOT NULL,
        details TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        first_seen TEXT NOT NULL,
        last_changed TEXT NOT NULL,
        stale_since TEXT,
        PRIMARY KEY (workspace, check_id, subject_key)
    );
    INSERT INTO results_v4 SELECT check_id, subject_key, workspace, subject_type, subject, subject_uuid, subject_name,
        severity, status, message, details, fingerprint, first_seen, last_changed, stale_since FROM results;
    DROP TABLE results;
    ALTER TABLE results_v4 RENAME TO results;
    CREATE INDEX results_ws ON results(workspace, check_id, status)
    """
)

MIGRATIONS.append(
    # 5: exceptions keyed by the subject's stable key (repository uuid, member account id, workspace
    # slug), not its name. Rows recorded by name are resolved to the repository that bears the name
    # now (or to the key of a stored result of the same test); the others stay, inactive, with why.
    """
    ALTER TABLE exceptions ADD COLUMN subject_key TEXT;
    ALTER TABLE exceptions ADD COLUMN inactive_reason TEXT;
    UPDATE exceptions SET subject_key = coalesce(
        (SELECT substr(s.key, 6) FROM snapshots s WHERE s.kind = 'repo' AND s.content IS NOT NULL
            AND (json_extract(s.content, '$.full_name') = exceptions.subject
                 OR json_extract(s.content, '$.uuid') = exceptions.subject)
            ORDER BY s.fetched_at DESC LIMIT 1),
        (SELECT r.subject_key FROM results r WHERE r.check_id = exceptions.check_id
            AND (r.subject = exceptions.subject OR r.subject_key = exceptions.subject)
            ORDER BY r.last_changed DESC LIMIT 1)
    );
    UPDATE exceptions SET inactive_reason = 'no repository, member or workspace known as ' || exceptions.subject
        || ' when exceptions became keyed by id (schema 5); it covers nothing: record a new one'
        WHERE subject_key IS NULL;
    CREATE INDEX exceptions_key ON exceptions(check_id, subject_key)
    """
)

# The workspace's members as rows (one per member of each workspace), rebuilt from the member list
# and the email lookup whenever either snapshot changes (app/store/snapshots.py), with the natural
# sort key of the display name and an index per sort of the Members page: a page reads 50 rows in
# index order instead of unpacking the member list's JSON per request. ``email`` is the address the
# workspace's email lookup matched to the member (the lowest, as the offboarding test reads it).
MIGRATIONS.append(
    # 6: the members table, filled from the stored member lists; indexes for the counts per status
    # and test (Overview, Findings), the Findings' default order (status rank, severity rank: the
    # expressions of app/store/views.py RESULT_SORTS["status"]) and the Overview's trend
    """
    CREATE TABLE members (
        workspace TEXT NOT NULL,
        account_id TEXT NOT NULL,
        display_name TEXT,
        name_key TEXT NOT NULL,
        permission TEXT,
        email TEXT,
        PRIMARY KEY (workspace, account_id)
    );
    CREATE INDEX members_name ON members(name_key, account_id);
    CREATE INDEX members_ws_name ON members(workspace, name_key, account_id);
    CREATE INDEX members_permission ON members(permission, name_key, account_id);
    CREATE INDEX results_status ON results(status, check_id);
    CREATE INDEX results_rank ON results(
        CASE status WHEN 'fail' THEN 0 WHEN 'unknown' THEN 1 WHEN 'excepted' THEN 2 WHEN 'pass' THEN 3 ELSE 4 END,
        CASE severity WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'medium' THEN 2 WHEN 'low' THEN 3 ELSE 4 END,
        check_id, subject);
    CREATE INDEX result_history_at ON result_history(at, new_status, old_status);
    INSERT OR REPLACE INTO members (workspace, account_id, display_name, name_key, permission, email)
    SELECT m.workspace, m.account_id, m.display_name, lp_natkey(m.display_name), m.permission, e.email
    FROM (SELECT s.workspace AS workspace,
                 coalesce(json_extract(j.value, '$.user.account_id'), json_extract(j.value, '$.user.uuid'))
                     AS account_id,
                 json_extract(j.value, '$.user.display_name') AS display_name,
                 json_extract(j.value, '$.permission') AS permission
          FROM snapshots s, json_each(s.content) j
          WHERE s.kind = 'members' AND json_valid(s.content) AND json_type(s.content) = 'array') m
    LEFT JOIN (SELECT s.workspace AS workspace, l.value AS account_id, min(l.key) AS email
               FROM snapshots s, json_each(s.content, '$.links') l
               WHERE s.kind = 'email_links' AND json_valid(s.content) AND json_type(s.content, '$.links') = 'object'
               GROUP BY 1, 2) e ON e.workspace = m.workspace AND e.account_id = m.account_id
    WHERE m.account_id IS NOT NULL
    """
)

# A delivery is a duplicate only when it repeats an ``X-Request-UUID`` (bitbucket-facts.md: dedupe
# on it, and stay idempotent anyway). The unique index on (connection, hook, body) made two real
# events with byte-identical bodies one: a repository transferred in a second time, a main branch
# moved back and forth (the soak's seed 448249513), lost until the next full pass. A retry whose
# uuid changed is now stored too and processed idempotently (no new result, no alert).
MIGRATIONS.append(
    # 7: no deduplication by body
    """
    DROP INDEX IF EXISTS events_body;
    """
)
