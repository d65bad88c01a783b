-- The queue: waiting acquires across all instances (migrations/00014).

-- name: RegisterInstance :one
-- silent_seconds: how long the instance may go without a heartbeat and
-- still count as alive (3 x its heartbeat interval; see
-- devalloc.instance_alive). probe_seconds: its --probe-timeout (see
-- DueLeases).
INSERT INTO devalloc.instances (name, silent_after, probe_timeout)
VALUES (@name, make_interval(secs => @silent_seconds::float8), make_interval(secs => @probe_seconds::float8))
RETURNING id;

-- name: TakeLivenessLock :one
-- Run on the listener's session: the lock lives as long as it does (see
-- devalloc.instance_alive). false: an older session of this instance still
-- holds it.
SELECT pg_try_advisory_lock(1685482609, (@id::bigint)::int4) AS taken;

-- name: InstanceHeartbeat :one
-- Marks the instance alive (and restates its bound); recreates its row
-- (same id) if another instance removed it while this one was cut off.
-- recreated: the row was gone, and with it this instance's waiters' rows.
-- clock_timestamp(): a heartbeat that waited (on a DBA's lock, say) marks
-- the instance alive from when it got through, not from when it was sent.
INSERT INTO devalloc.instances (id, name, seen_at, silent_after, probe_timeout) OVERRIDING SYSTEM VALUE
VALUES (@id, @name, clock_timestamp(), make_interval(secs => @silent_seconds::float8), make_interval(secs => @probe_seconds::float8))
ON CONFLICT (id) DO UPDATE SET seen_at = clock_timestamp(), silent_after = excluded.silent_after,
                               probe_timeout = excluded.probe_timeout
RETURNING (xmax = 0) AS recreated;

-- name: InstanceAlive :one
-- Whether the line counts the instance as alive (its lock is held and its
-- heartbeat is within its bound).
SELECT devalloc.instance_alive(@id::bigint) AS alive;

-- name: DeregisterInstance :exec
-- A clean stop: the instance's waiters have been answered; their rows (if
-- any are left) go with it.
DELETE FROM devalloc.instances WHERE id = @id;

-- name: ForgetGoneInstances :execrows
-- Instances that stopped without deregistering (killed, crashed, cut off):
-- silent for silent_seconds (3 x the caller's heartbeat interval), not alive
-- (devalloc.instance_alive), and either nobody holds their liveness lock or
-- they have been silent for 10 x their own bound. The line has been skipping
-- their waiters since; the waiters go with them (ON DELETE CASCADE). An
-- instance whose session lingers (a crashed host the server has not given up
-- on; keepalives end it within ~30 s) keeps its rows a while: one that was
-- only cut off, e.g. by a database restart, then finds them in place. One
-- whose row went anyway puts it back at its next heartbeat or join, and its
-- waiters rejoin at their old places.
DELETE FROM devalloc.instances i
WHERE i.seen_at < now() - make_interval(secs => @silent_seconds::float8)
  AND NOT devalloc.instance_alive(i.id)
  AND (i.seen_at < now() - 10 * i.silent_after
       OR pg_try_advisory_xact_lock_shared(1685482609, i.id::int4));

-- name: EnqueueWaiter :one
-- Puts a request in its pool's line. ranked_at is the arrival time moved
-- earlier by head_start_seconds (priority x aging interval); a request going
-- back in line after a failed probe on handoff passes its old seq,
-- enqueued_at and ranked_at to keep its place. fitting_idle says whether an
-- idle device fits it right now (then the caller dispatches at once: the
-- device may have been freed while this row was not yet visible to the
-- freeing transaction).
--
-- A retry of a join whose answer was lost (the connection cut after
-- commit) must not fail on its own row nor put a served waiter in line a
-- second time: each waiter id is served at most once (a rejoin takes a new
-- id). So the row is written only when neither it nor a lease handed to
-- this id exists: an existing row comes back as the join's place, and
-- served says a lease already carries the id (seq NULL). Serving deletes
-- the row and inserts the lease in one transaction, so the statement's
-- snapshot sees one or the other once the earlier try committed. Both
-- absent and no row written (seq NULL, served false): the earlier try was
-- still committing; the caller tries again.
--
-- A key that already has a lease (a twin of this request, waiting or not,
-- got it) is not put in line: key_taken, nothing written, and the caller
-- answers with a replay of that lease. It is looked for under the key's
-- advisory lock (devalloc.idempotency_key_taken, migrations/00019), so a
-- grant committing meanwhile either is seen here or sees this row and
-- removes it (devalloc.tell_twins).
WITH arrival AS (
    SELECT coalesce(sqlc.narg('enqueued_at')::timestamptz, clock_timestamp()) AS at
), handed AS (
    SELECT EXISTS (SELECT 1 FROM devalloc.leases l WHERE l.waiter_id = @id::uuid) AS served
), mine AS (
    SELECT q.seq, q.enqueued_at, q.ranked_at FROM devalloc.waiters q WHERE q.id = @id::uuid
), taken AS (
    -- Only for a join not yet written (a served id or a row of its own
    -- answers first).
    SELECT devalloc.idempotency_key_taken(@owner::text, sqlc.narg('idempotency_key')::text) AS key_taken
    FROM handed WHERE NOT handed.served AND NOT EXISTS (SELECT 1 FROM mine)
), w AS (
    INSERT INTO devalloc.waiters (id, seq, instance_id, pool, labels, count, priority, enqueued_at, ranked_at,
                                  owner, holder, ttl_seconds, idempotency_key, request_fingerprint, probes_handoff)
    SELECT @id::uuid, coalesce(sqlc.narg('seq')::bigint, nextval('devalloc.waiters_seq_seq')),
           @instance_id::bigint, @pool::text, @labels::jsonb, @count::int, @priority::int, arrival.at,
           coalesce(sqlc.narg('ranked_at')::timestamptz, arrival.at - make_interval(secs => @head_start_seconds::float8)),
           @owner::text, @holder::text, @ttl_seconds::float8, sqlc.narg('idempotency_key')::text,
           sqlc.narg('request_fingerprint')::bytea, @probes_handoff::boolean
    FROM arrival, handed, taken
    WHERE NOT handed.served AND NOT EXISTS (SELECT 1 FROM mine) AND NOT taken.key_taken
    ON CONFLICT (id) DO NOTHING
    RETURNING seq, enqueued_at, ranked_at
), placed AS (
    SELECT w.seq, w.enqueued_at, w.ranked_at FROM w
    UNION ALL
    SELECT mine.seq, mine.enqueued_at, mine.ranked_at FROM mine
)
SELECT placed.seq, placed.enqueued_at, placed.ranked_at, handed.served,
       coalesce((SELECT taken.key_taken FROM taken), false)::boolean AS key_taken,
       EXISTS (SELECT 1 FROM devalloc.devices d
               WHERE d.pool = @pool::text AND d.state = 'idle' AND d.labels @> @labels::jsonb) AS fitting_idle
FROM handed LEFT JOIN placed ON true;

-- name: Dispatch :many
-- Serves the pool's line from its idle devices (devalloc.dispatch).
SELECT * FROM devalloc.dispatch(@pool::text);

-- name: CancelWaiter :execrows
-- The request leaves the line (its client went away or its wait ended). 0
-- rows: it is no longer there, because it was served (its leases carry its
-- id) or its instance was taken for dead. A transaction handing it a device
-- holds the row locked, so this waits for that to commit.
DELETE FROM devalloc.waiters WHERE id = @id;

-- name: WaiterLeases :many
-- The active leases handed to a waiter, with what the holder needs of the
-- device.
SELECT sqlc.embed(l), d.labels AS device_labels, d.address AS device_address, d.probe AS device_probe
FROM devalloc.leases l
LEFT JOIN devalloc.devices d ON d.id = l.device_id
WHERE l.waiter_id = @waiter_id AND l.released_at IS NULL
ORDER BY l.device_name;

-- name: WaitersStillQueued :many
-- Which of an instance's waiters are still in line (the others were served
-- or dropped, and a notification of it may have been lost).
SELECT id FROM devalloc.waiters WHERE id = ANY (@ids::uuid[]);

-- name: QueueBusy :one
-- Whether anyone waits in the pool: then a new request takes its place in
-- line instead of taking an idle device itself.
SELECT EXISTS (SELECT 1 FROM devalloc.waiters WHERE pool = @pool) AS busy;

-- name: ListQueue :many
-- The line of one pool (or all), in serving order with 1-based positions,
-- optionally only one owner's entries (positions stay those in the whole
-- line: the owner is filtered after the view numbers the line). Waiters of
-- dead instances are left out, as the line skips them. The DBAs' view.
SELECT q.waiter_id AS id, q.pool, q.labels, q.count, q.priority, q.owner, q.holder, q.enqueued_at, q.ranked_at,
       q.position
FROM devalloc.queue q
WHERE (sqlc.narg('pool')::text IS NULL OR q.pool = sqlc.narg('pool'))
  AND (sqlc.narg('owner')::text IS NULL OR q.owner = sqlc.narg('owner'))
ORDER BY q.pool, q.position
LIMIT @max_rows;

-- name: ConfirmHandoff :one
-- The waiter's probe of the devices handed to it passed: they are its
-- answer now, with their TTL started over, and a retry may replay them
-- (devalloc.confirm_handoff_until). Not confirmed: one of them ended
-- before (revoked, reaped), so none is and they are no answer.
SELECT (c.until IS NOT NULL)::boolean AS confirmed, coalesce(c.until, now())::timestamptz AS expires_at
FROM devalloc.confirm_handoff_until(@ids::uuid[]) AS c(until);

-- name: GroupLeases :many
-- Every lease of a group acquire, with the device details.
SELECT sqlc.embed(l), d.labels AS device_labels, d.address AS device_address, d.probe AS device_probe
FROM devalloc.leases l
LEFT JOIN devalloc.devices d ON d.id = l.device_id
WHERE l.group_id = @group_id
ORDER BY l.device_name;

-- name: FailHandedLease :one
-- A device handed over from the line failed its probe: the lease ends as
-- probe_failed and the device goes offline for the health checker. The
-- handoff is given back (the waiter goes back to its place with its
-- idempotency key), so it gives its key up in this same statement: the
-- lease's own, or, in a group, the first lease's (whose device answered and
-- is given back after). Otherwise the waiter would be dropped as "the key
-- already has a lease" and its retry answered with this dead one. The key
-- is kept in given_up_idempotency_key, for audit only (see migrations/00015).
WITH failed AS (
    SELECT l.id, l.group_id FROM devalloc.leases l WHERE l.id = @id
), ended AS (
    UPDATE devalloc.leases l SET
        released_at              = clock_timestamp(),
        end_reason               = 'probe_failed',
        given_up_idempotency_key = coalesce(l.idempotency_key, l.given_up_idempotency_key),
        idempotency_key          = NULL
    WHERE l.id = @id AND l.active_device_id IS NOT NULL
    RETURNING l.id, l.device_id, l.fencing_token
), unkeyed AS (
    -- The rest of the handoff (disjoint from ended: one statement must
    -- not update a row twice), and the lease itself if it had ended
    -- otherwise meanwhile.
    UPDATE devalloc.leases l SET given_up_idempotency_key = l.idempotency_key, idempotency_key = NULL
    FROM failed
    WHERE l.idempotency_key IS NOT NULL
      AND ((l.group_id = failed.group_id AND l.id <> failed.id)
           OR (l.id = failed.id AND l.active_device_id IS NULL))
    RETURNING l.id
)
UPDATE devalloc.devices d SET
    state          = 'offline',
    state_reason   = @reason,
    lease_id       = NULL,
    last_probe_at  = now(),
    last_probe_ok  = false,
    probe_failures = probe_failures + 1,
    next_probe_at  = now() + make_interval(secs => @retry_in_seconds::float8),
    updated_at     = now()
FROM ended
WHERE d.id = ended.device_id AND d.lease_id = ended.id AND d.fencing_token = ended.fencing_token
RETURNING d.id;

-- name: RenewGroup :many
-- Extends every active, unlapsed lease of an owner's group (database
-- clock); not while its handoff is under probe (see RenewLease).
UPDATE devalloc.leases SET expires_at = clock_timestamp() + make_interval(secs => @ttl_seconds::float8)
WHERE group_id = @group_id AND owner = @owner AND released_at IS NULL AND expires_at > now() AND NOT handoff_pending
RETURNING *;

-- name: GroupLeaseIDs :many
-- The active leases of a group, for releasing them together; with owner
-- set, only if they are that owner's.
SELECT id, owner FROM devalloc.leases
WHERE group_id = @group_id AND released_at IS NULL
ORDER BY device_name;
