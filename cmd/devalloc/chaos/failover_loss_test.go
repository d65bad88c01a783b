//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
)

// dbLease is one row of the promoted database's lease history.
type dbLease struct {
	id                uuid.UUID
	device            string
	token             int64
	acquired, expires time.Time
	released          *time.Time
	reason            string
}

func (h *harness) readLeases(ctx context.Context) ([]dbLease, error) {
	rows, err := h.db.admin.Query(ctx, `
		SELECT id, device_name, fencing_token, acquired_at, expires_at, released_at, coalesce(end_reason, '')
		FROM devalloc.leases ORDER BY device_name, acquired_at`)
	if err != nil {
		return nil, fmt.Errorf("read leases: %w", err)
	}
	defer rows.Close()
	var all []dbLease
	for rows.Next() {
		var l dbLease
		if err := rows.Scan(&l.id, &l.device, &l.token, &l.acquired, &l.expires, &l.released, &l.reason); err != nil {
			return nil, fmt.Errorf("scan leases: %w", err)
		}
		all = append(all, l)
	}
	return all, rows.Err()
}

// heldUntil is when a client stopped believing it held g: its release (or
// the start of it), else the expiry it was last told.
func heldUntil(g grant) time.Time {
	if g.letGo && g.letGoAt.Before(g.expiresAt) {
		return g.letGoAt
	}
	return g.expiresAt
}

// checkFailoverLoss holds what clients were told against the promoted
// database: a grant (201) missing there is lost; a missing grant's device
// and fencing token given to another lease is a reused token; another
// lease of that device begun while the lost grant's client still held it is
// a device with two holders; a lease the promoted database ended (expired)
// before the expiry a renew's 200 told its holder is a renewal taken back.
// Each is a violation (reported, not failed, in a measureOnly run); the
// counts and the worst cases go to the summary either way.
//
// lastFrom is the start of the last moments before the kill (the stall, if
// any): the grants told then are counted apart, being the ones an
// asynchronous standby is most likely not to have.
func (h *harness) checkFailoverLoss(ctx context.Context, lastFrom, killedAt time.Time) {
	leases, err := h.readLeases(ctx)
	if err != nil {
		h.violate("%v", err)
		return
	}
	byID := make(map[uuid.UUID]dbLease, len(leases))
	byDevice := map[string][]dbLease{}
	for _, l := range leases {
		byID[l.id] = l
		byDevice[l.device] = append(byDevice[l.device], l)
	}
	led := h.led.snapshot()
	var granted, beforeKill, last, lastLost, lost, reused, twoHolders, renewLost int
	var lostAges []time.Duration
	for _, g := range led {
		granted++
		if g.acquiredAt.Before(killedAt) {
			beforeKill++
		}
		l, ok := byID[g.id]
		inLast := !g.acquiredAt.Before(lastFrom) && g.acquiredAt.Before(killedAt)
		if inLast {
			last++
		}
		if !ok {
			lost++
			if inLast {
				lastLost++
			}
			lostAges = append(lostAges, killedAt.Sub(g.acquiredAt))
			h.violate("LOST GRANT: lease %s of %s (token %d, client %d) granted %v before the kill is not on the promoted server",
				g.id, g.device, g.token, g.client, killedAt.Sub(g.acquiredAt).Round(time.Millisecond))
			for _, o := range byDevice[g.device] {
				if o.token == g.token {
					reused++
					h.violate("FENCING TOKEN REUSED: %s token %d, told to client %d (lost lease %s), given again to lease %s at %s",
						g.device, g.token, g.client, g.id, o.id, o.acquired.Format("15:04:05.000"))
				}
				if !o.acquired.Before(g.acquiredAt) && o.acquired.Before(heldUntil(g)) {
					twoHolders++
					h.violate("TWO HOLDERS across the failover: %s granted to lease %s (token %d) at %s while client %d held lost lease %s (token %d) until %s",
						g.device, o.id, o.token, o.acquired.Format("15:04:05.000"), g.client, g.id, g.token, heldUntil(g).Format("15:04:05.000"))
				}
			}
			continue
		}
		// Present: a renew's 200 told its holder g.expiresAt; the lease
		// must not have been ended by expiry before that.
		if l.released != nil && l.reason == "expired" && l.released.Before(g.expiresAt) && !(g.letGo && g.letGoAt.Before(*l.released)) {
			renewLost++
			h.violate("RENEWAL TAKEN BACK: lease %s of %s (client %d) was told it held until %s; the promoted server expired it at %s (expires_at %s)",
				g.id, g.device, g.client, g.expiresAt.Format("15:04:05.000"), l.released.Format("15:04:05.000"), l.expires.Format("15:04:05.000"))
		}
	}
	var ages string
	if len(lostAges) > 0 {
		slices.Sort(lostAges)
		parts := make([]string, 0, len(lostAges))
		for _, a := range lostAges {
			parts = append(parts, a.Round(time.Millisecond).String())
		}
		ages = " (granted this long before the kill: " + strings.Join(parts, ", ") + ")"
	}
	h.note("failover loss: %d grants told to clients (%d before the kill, %d in its last %v); lost on the promoted server: %d grants (%d of the last %v)%s, %d fencing tokens reused, %d devices with two holders, %d renewals taken back",
		granted, beforeKill, last, killedAt.Sub(lastFrom).Round(time.Millisecond), lost, lastLost, killedAt.Sub(lastFrom).Round(time.Millisecond), ages, reused, twoHolders, renewLost)
}
