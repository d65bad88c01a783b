package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"github.com/devalloc/devalloc/db"
	"github.com/devalloc/devalloc/db/devalloctype"
)

// demoPool is the pool "serve --demo N" fills with simulated devices.
const demoPool = "demo"

// demoFarm is a set of simulated devices owned by this process: loopback
// TCP listeners that accept connections and close them at once, which is
// all the tcp probe asks of a device. One of them is dead (its port refuses
// connections) so that the offline path can be seen.
type demoFarm struct {
	listeners []net.Listener
	wg        sync.WaitGroup
}

// startDemo opens n simulated devices and registers them in pool "demo" as
// demo-1 ... demo-n. With n >= 2, demo-1 is the dead one; it is registered
// (or, on a restart, re-queued) first, so the least-recently-idle pick
// reaches it early. On a restart the devices already registered get their
// new addresses, and one that an earlier run left offline is put back to
// idle (unless it is leased).
func startDemo(ctx context.Context, alloc *db.Allocator, n int, logger *slog.Logger) (*demoFarm, error) {
	farm := &demoFarm{}
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("demo-%d", i)
		dead := i == 1 && n >= 2
		var addr, kind string
		var err error
		if dead {
			addr, err = deadAddress()
			kind = "dead"
		} else {
			addr, err = farm.listen()
			kind = "alive"
		}
		if err != nil {
			farm.Close()
			return nil, fmt.Errorf("demo device %s: %w", name, err)
		}
		if err := upsertDemoDevice(ctx, alloc, name, addr, devalloctype.Labels{"demo": kind}); err != nil {
			farm.Close()
			return nil, err
		}
		logger.Info("demo device ready", "device", name, "pool", demoPool, "address", addr, "simulates", kind)
	}
	return farm, nil
}

// listen opens one simulated device on a free loopback port.
func (f *demoFarm) listen() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	f.listeners = append(f.listeners, ln)
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			conn.Close()
		}
	}()
	return ln.Addr().String(), nil
}

// deadAddress is a loopback port that refuses connections: one that was
// free a moment ago and is closed again.
func deadAddress() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

// Close stops the simulated devices.
func (f *demoFarm) Close() {
	for _, ln := range f.listeners {
		ln.Close()
	}
	f.wg.Wait()
}

// upsertDemoDevice registers a demo device, or points the one registered by
// an earlier run at its new address. A device an earlier run left offline
// goes back to idle; so does an idle one, to queue it afresh: the pick takes
// the least recently idle device first, and re-queueing every device in
// registration order keeps the dead one, registered first, at the front.
func upsertDemoDevice(ctx context.Context, alloc *db.Allocator, name, addr string, labels devalloctype.Labels) error {
	_, err := alloc.CreateDevice(ctx, db.DeviceSpec{
		Name: name, Pool: demoPool, Labels: labels, Address: addr, Probe: "tcp",
	})
	if err == nil {
		return nil
	}
	if !errors.Is(err, devalloctype.ErrDeviceExists) {
		return fmt.Errorf("register demo device: %w", err)
	}
	dev, err := alloc.GetDevice(ctx, name)
	if err != nil {
		return fmt.Errorf("demo device %s: %w", name, err)
	}
	if dev.Pool != demoPool {
		return fmt.Errorf("demo device %s: a device of that name exists in pool %q; remove it or run without --demo", name, dev.Pool)
	}
	probeKind := "tcp"
	dev, err = alloc.UpdateDevice(ctx, name, db.DevicePatch{Labels: &labels, Address: &addr, Probe: &probeKind})
	if err != nil {
		return fmt.Errorf("demo device %s: update address: %w", name, err)
	}
	var steps []string
	switch dev.State {
	case devalloctype.StateOffline:
		steps = []string{devalloctype.StateIdle}
	case devalloctype.StateIdle:
		// Only a state change moves a device in the idle queue.
		steps = []string{devalloctype.StateMaintenance, devalloctype.StateIdle}
	}
	for _, state := range steps {
		reason := ""
		if state == devalloctype.StateMaintenance {
			reason = "demo restart: re-queueing"
		}
		_, err := alloc.UpdateDevice(ctx, name, db.DevicePatch{State: &state, Reason: reason})
		if errors.Is(err, devalloctype.ErrDeviceLeased) {
			// Acquired meanwhile: it has left the queue anyway.
			return nil
		}
		if err != nil {
			return fmt.Errorf("demo device %s: set %s: %w", name, state, err)
		}
	}
	return nil
}

// demoKeyName is the client key "serve --demo" prints in its curl line.
const demoKeyName = "demo"

// rotateDemoKey revokes the previous run's demo key, whose secret is gone
// (only its hash is stored), and creates a fresh one. Leases belong to the
// key's name, so the new key still owns what the old one acquired.
func rotateDemoKey(ctx context.Context, keys *db.KeyStore) (string, error) {
	if err := keys.Revoke(ctx, demoKeyName); err != nil && !errors.Is(err, devalloctype.ErrNotFound) {
		return "", err
	}
	secret, _, err := keys.Create(ctx, demoKeyName, db.RoleClient)
	if err != nil {
		return "", fmt.Errorf("demo key: %w", err)
	}
	return secret, nil
}
