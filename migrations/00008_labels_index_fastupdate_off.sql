-- +goose Up
-- Every acquire and release rewrites its device's row, and each new row
-- version adds entries to the label index. With GIN's default fastupdate,
-- those go to a pending list that every labeled pick must read in full
-- until a vacuum merges it: up to 4 MB, milliseconds per pick in a busy
-- pool (devalloc bench scale, and BenchmarkAcquireLabeled). Without it each
-- update goes straight into the index, a little dearer per update, and
-- picks stay fast between vacuums.
ALTER INDEX devalloc.devices_labels SET (fastupdate = off);
SELECT gin_clean_pending_list('devalloc.devices_labels');

-- +goose Down
ALTER INDEX devalloc.devices_labels RESET (fastupdate);
