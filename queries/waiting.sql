-- Waiting acquires per instance and pool, for pool_summary.

-- name: ReportWaiting :exec
-- Replaces this instance's counts: pools listed get their count, pools no
-- longer listed lose their row.
WITH cur AS (
    SELECT unnest(@pools::text[]) AS pool, unnest(@counts::int[]) AS waiting
), gone AS (
    DELETE FROM devalloc.instance_waiting w
    WHERE w.instance = @instance AND w.pool <> ALL (@pools::text[])
)
INSERT INTO devalloc.instance_waiting (instance, pool, waiting, reported_at)
SELECT @instance, cur.pool, cur.waiting, now() FROM cur
ON CONFLICT (instance, pool) DO UPDATE SET waiting = EXCLUDED.waiting, reported_at = EXCLUDED.reported_at;

-- name: ForgetStaleWaiting :exec
-- Rows of instances that stopped without clearing them.
DELETE FROM devalloc.instance_waiting WHERE reported_at < now() - interval '1 hour';
