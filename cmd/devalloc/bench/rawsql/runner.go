package rawsql

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// client is one simulated client: a number (pgbench's :client_id, also the
// lease's holder) and a connection of its own, as pgbench gives each client.
type client struct {
	id       int
	conn     *pgx.Conn
	deadline time.Time // when the run ends; a cycle that ends later does not count
}

// cycleFunc is one acquire → release cycle of client c. It returns
// errStopped when c's run time was up before the cycle could finish.
type cycleFunc func(ctx context.Context, c client) error

// runClients connects clients clients, then has each run cycle in a loop
// until d has passed, and returns the cycles per second finished within d.
// The clock starts once every client is connected, as pgbench's does. The
// first error of any client stops all of them and is returned.
func runClients(ctx context.Context, databaseURL string, clients int, d time.Duration, cycle cycleFunc) (float64, error) {
	conns := make([]*pgx.Conn, 0, clients)
	defer func() {
		for _, conn := range conns {
			closeConn(ctx, conn)
		}
	}()
	for i := range clients {
		conn, err := pgx.Connect(ctx, databaseURL)
		if err != nil {
			return 0, fmt.Errorf("connect client %d: %w", i, err)
		}
		conns = append(conns, conn)
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	deadline := time.Now().Add(d)
	cycles := make([]int, clients) // one slot per client: no sharing until Wait
	var wg sync.WaitGroup
	for i, conn := range conns {
		wg.Go(func() {
			c := client{id: i, conn: conn, deadline: deadline}
			for time.Now().Before(deadline) {
				err := cycle(ctx, c)
				if errors.Is(err, errStopped) {
					return
				}
				if err != nil {
					cancel(fmt.Errorf("client %d: %w", i, err))
					return
				}
				if !time.Now().After(deadline) {
					cycles[i]++
				}
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return 0, err
	}
	total := 0
	for _, n := range cycles {
		total += n
	}
	return float64(total) / d.Seconds(), nil
}
