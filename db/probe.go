package db

import (
	"context"
	"time"

	"github.com/devalloc/devalloc/db/internal/dbsqlc"
	"github.com/devalloc/devalloc/db/probe"
)

// needsProbe tells whether an acquire must probe the device before
// granting it: always, unless its probe is "none" or, with ProbeFreshness
// on, it was released by a holder (not merely registered) or passed a
// probe within that window. The window is read on this instance's clock;
// GrantUnprobed applies the same rule on the database's.
func (a *Allocator) needsProbe(row dbsqlc.DevallocDevice) bool {
	if probe.Kind(row.Probe) == probe.None {
		return false
	}
	fresh := a.cfg.ProbeFreshness
	if fresh <= 0 {
		return true
	}
	if row.FencingToken > 0 && time.Since(row.IdleSince) < fresh {
		return false
	}
	passed := row.LastProbeOk != nil && *row.LastProbeOk && row.LastProbeAt != nil
	return !passed || time.Since(*row.LastProbeAt) >= fresh
}

func (a *Allocator) probeDevice(ctx context.Context, row dbsqlc.DevallocDevice) error {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.ProbeTimeout)
	defer cancel()
	return a.probe(ctx, row.Probe, row.Address)
}

// probe runs the configured prober and tells the observer how it went.
func (a *Allocator) probe(ctx context.Context, kind, address string) error {
	start := time.Now()
	err := a.cfg.Prober.Probe(ctx, probe.Kind(kind), address)
	a.cfg.Observer.ProbeDone(kind, time.Since(start), err)
	return err
}
