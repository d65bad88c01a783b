package db

import (
	"context"
	"sort"
	"time"

	"github.com/devalloc/devalloc/db/dbsqlc"
)

// runWaitingReporter writes this instance's waiting acquires per pool to
// devalloc.instance_waiting every WaitingReportInterval (jittered), for
// the pool_summary view: one statement per interval however many wait,
// and none while nobody waits here. On the way out it clears its rows.
func (a *Allocator) runWaitingReporter(ctx context.Context) {
	reported := false // this instance has rows in the table
	for {
		select {
		case <-ctx.Done():
			if reported {
				clearCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
				a.reportWaiting(clearCtx, nil)
				cancel()
			}
			return
		case <-time.After(jitter(a.cfg.WaitingReportInterval)):
		}
		counts := a.hub.waitingPools()
		if len(counts) == 0 && !reported {
			continue
		}
		if err := a.reportWaiting(ctx, counts); err != nil {
			if ctx.Err() == nil {
				a.log.Warn("could not report waiting acquires", "err", err)
			}
			continue
		}
		reported = len(counts) > 0
	}
}

// reportWaiting replaces this instance's rows with counts (pools with
// waiters only).
func (a *Allocator) reportWaiting(ctx context.Context, counts map[string]int) error {
	params := dbsqlc.ReportWaitingParams{Instance: a.notifier.from, Pools: []string{}, Counts: []int32{}}
	pools := make([]string, 0, len(counts))
	for p, n := range counts {
		if n > 0 {
			pools = append(pools, p)
		}
	}
	sort.Strings(pools) // a stable row order: concurrent reports lock alike
	for _, p := range pools {
		params.Pools = append(params.Pools, p)
		params.Counts = append(params.Counts, int32(counts[p]))
	}
	return a.q.ReportWaiting(ctx, params)
}
