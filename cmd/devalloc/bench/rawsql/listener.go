package rawsql

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// listener is the LISTEN side of Notify: one connection that hands every
// notification on its channel to a tracker, stamped when it was received.
type listener struct {
	conn   *pgx.Conn
	cancel context.CancelFunc
	done   chan struct{}
}

// startListener connects and LISTENs on channel before it returns, so no
// release made afterwards can be missed. If the connection fails during the
// run, fail is called with the error.
func startListener(ctx context.Context, databaseURL, channel string, t *tracker, fail func(error)) (*listener, error) {
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		return nil, fmt.Errorf("connect listener: %w", err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		closeConn(ctx, conn)
		return nil, fmt.Errorf("listen on %s: %w", channel, err)
	}
	lctx, cancel := context.WithCancel(ctx)
	l := &listener{conn: conn, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			n, err := conn.WaitForNotification(lctx)
			if err != nil {
				if lctx.Err() == nil {
					fail(fmt.Errorf("listener: %w", err))
				}
				return
			}
			t.receive(n.Payload, time.Now())
		}
	}()
	return l, nil
}

// stop ends the listener and closes its connection.
func (l *listener) stop(ctx context.Context) {
	l.cancel()
	<-l.done
	closeConn(ctx, l.conn)
}
