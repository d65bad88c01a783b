//go:build chaos

package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	openapi_types "github.com/oapi-codegen/runtime/types"

	"github.com/devalloc/devalloc/httpapi/client"
)

// loadSpec describes a pool of clients: each acquires (long-polling
// wait_seconds), holds the device briefly, and releases it, over and over.
type loadSpec struct {
	pool             string
	clients          int
	waitMin, waitMax int // wait_seconds, drawn per acquire
	holdMin, holdMax time.Duration
	ttl              int64 // ttl_seconds
	// Per acquire, in percent: the client gives up mid-wait; it reads only
	// the status of the answer and goes away (an orphaned lease when it was
	// a 201); after a grant, the holder stops renewing and walks away; or it
	// holds for 1.5 TTL, renewing every TTL/3.
	vanishWaitPct, vanishRespPct, stopRenewPct, longHoldPct int
}

func (s *loadSpec) defaults() {
	if s.pool == "" {
		s.pool = "farm"
	}
	if s.waitMin == 0 {
		s.waitMin, s.waitMax = 2, 5
	}
	if s.holdMax == 0 {
		s.holdMin, s.holdMax = 10*time.Millisecond, 200*time.Millisecond
	}
	if s.ttl == 0 {
		s.ttl = 3
	}
}

// loadRun is a running load; finish stops it and waits for its clients
// (each finishes what it is doing: requests are bounded by their timeouts).
type loadRun struct {
	stop chan struct{}
	wg   sync.WaitGroup
	ids  []int
}

func (h *harness) startLoad(spec loadSpec) *loadRun {
	spec.defaults()
	r := &loadRun{stop: make(chan struct{})}
	for range spec.clients {
		id := int(h.nextClient.Add(1))
		r.ids = append(r.ids, id)
		r.wg.Go(func() { h.runClient(id, spec, r.stop) })
	}
	return r
}

func (r *loadRun) finish() {
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	r.wg.Wait()
}

func (h *harness) runClient(id int, spec loadSpec, stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(uint64(id), uint64(time.Now().UnixNano())))
	holder := fmt.Sprintf("client-%03d", id)
	for {
		select {
		case <-stop:
			return
		default:
		}
		inst := h.pick(rng)
		if inst == nil {
			if !sleep(100*time.Millisecond, stop) {
				return
			}
			continue
		}
		wait := time.Duration(spec.waitMin+rng.IntN(spec.waitMax-spec.waitMin+1)) * time.Second
		roll := rng.IntN(100)
		switch {
		case roll < spec.vanishWaitPct:
			giveUp := time.Duration(50+rng.IntN(int(wait/time.Millisecond)*8/10)) * time.Millisecond
			if lease := h.acquire(inst, spec.pool, wait, spec.ttl, holder, id, giveUp); lease != nil {
				h.hold(lease, spec, rng, stop)
			}
		case roll < spec.vanishWaitPct+spec.vanishRespPct:
			h.acquireAndVanish(inst, spec.pool, wait, spec.ttl, holder)
		default:
			lease := h.acquire(inst, spec.pool, wait, spec.ttl, holder, id, 0)
			if lease == nil {
				// A polite client pauses before it asks again.
				if !sleep(time.Duration(50+rng.IntN(200))*time.Millisecond, stop) {
					return
				}
				continue
			}
			h.hold(lease, spec, rng, stop)
		}
	}
}

// heldLease is a grant in a client's hands.
type heldLease struct {
	g    *grant
	inst *instance
}

// hold keeps the device a while (renewing if long), then releases it, or
// walks away without a word (stopRenewPct).
func (h *harness) hold(l *heldLease, spec loadSpec, rng *rand.Rand, stop <-chan struct{}) {
	roll := rng.IntN(100)
	switch {
	case roll < spec.stopRenewPct:
		h.led.abandon(l.g)
		h.stats.count("holder", "stopped renewing (left to the reaper)")
		return
	case roll < spec.stopRenewPct+spec.longHoldPct:
		ttl := time.Duration(spec.ttl) * time.Second
		end := time.Now().Add(ttl * 3 / 2)
		for time.Now().Before(end) && sleep(ttl/3, stop) {
			if !h.renew(l, spec.ttl, rng) {
				return // lost: nothing to release
			}
		}
	default:
		d := spec.holdMin + time.Duration(rng.Int64N(int64(spec.holdMax-spec.holdMin)+1))
		time.Sleep(d)
	}
	h.release(l, rng)
}

// problemLabel is "503 no-device-available" for a problem answer.
func problemLabel(status int, p *client.Problem) string {
	if p == nil || p.Type == "" {
		return fmt.Sprint(status)
	}
	return fmt.Sprintf("%d %s", status, strings.TrimPrefix(p.Type, client.ProblemTypePrefix))
}

// checkProblem checks an error answer is clean problem+json, with
// Retry-After where the status calls for one; it returns the label.
func (h *harness) checkProblem(op string, inst *instance, resp *http.Response, body []byte) string {
	err := client.CheckResponse(resp, body)
	var p *client.Problem
	errors.As(err, &p)
	label := problemLabel(resp.StatusCode, p)
	if ct := resp.Header.Get("Content-Type"); !strings.Contains(ct, "application/problem+json") {
		h.violate("%s on instance %d: %d with Content-Type %q, not problem+json: %.200s", op, inst.idx, resp.StatusCode, ct, body)
	}
	switch resp.StatusCode {
	case http.StatusServiceUnavailable, http.StatusTooManyRequests:
		if resp.Header.Get("Retry-After") == "" || p == nil || p.RetryAfter <= 0 {
			h.violate("%s on instance %d: %s without a Retry-After", op, inst.idx, label)
		}
	}
	if resp.StatusCode >= 500 && resp.StatusCode != http.StatusServiceUnavailable {
		detail := ""
		if p != nil {
			detail = p.Detail
		}
		h.violate("%s on instance %d: %s %q (a server error; want 503 with Retry-After for what is transient)", op, inst.idx, label, detail)
	}
	return label
}

// acquire asks inst for a device, records the outcome and checks it: a
// 201 or a clean error, within wait + answerSlack. giveUp > 0 cancels the
// request that long after it was sent (a client that goes away mid-wait).
func (h *harness) acquire(inst *instance, pool string, wait time.Duration, ttl int64, holder string, clientID int, giveUp time.Duration) *heldLease {
	const op = "acquire"
	epoch := inst.epoch.Load()
	ctx, cancel := context.WithTimeout(h.ctx, wait+clientSlack)
	defer cancel()
	var gaveUp atomic.Bool
	if giveUp > 0 {
		t := time.AfterFunc(giveUp, func() { gaveUp.Store(true); cancel() })
		defer t.Stop()
	}
	ws := int64(wait / time.Second)
	start := time.Now()
	r, err := inst.client.AcquireLeaseWithResponse(ctx, nil, client.AcquireLeaseRequest{
		Pool: &pool, WaitSeconds: &ws, TTLSeconds: &ttl, Holder: &holder,
	})
	elapsed := time.Since(start)
	disturbed := inst.epoch.Load() != epoch
	suffix := ""
	if disturbed {
		suffix = " (instance killed/frozen meanwhile)"
	}
	if err != nil {
		switch {
		case gaveUp.Load():
			h.stats.count(op, "client gave up mid-wait")
		case ctx.Err() != nil:
			h.stats.count(op, "no answer within wait+3s"+suffix)
			if !disturbed {
				h.violate("acquire HUNG on instance %d: no answer within wait %v + %v", inst.idx, wait, clientSlack)
			}
		default:
			h.stats.count(op, "connection error"+suffix)
			if !disturbed {
				h.violate("acquire on instance %d: connection error from a live instance: %v", inst.idx, err)
			}
		}
		return nil
	}
	if !disturbed {
		h.stats.answered(elapsed - wait)
		if elapsed > wait+answerSlack+h.sc.lateSlack {
			h.violate("acquire on instance %d answered %d after %v, wait_seconds %d (bound wait + %v)",
				inst.idx, r.StatusCode(), elapsed.Round(time.Millisecond), ws, answerSlack+h.sc.lateSlack)
		}
	}
	if r.StatusCode() == http.StatusCreated {
		if r.JSON201 == nil {
			h.violate("acquire on instance %d: 201 without a lease body", inst.idx)
			return nil
		}
		h.stats.count(op, "201")
		h.stats.granted(clientID)
		return &heldLease{g: h.led.record(h, r.JSON201, clientID, inst.idx), inst: inst}
	}
	label := h.checkProblem(op, inst, r.HTTPResponse, r.Body)
	h.stats.count(op, label+suffix)
	switch r.StatusCode() {
	case http.StatusServiceUnavailable, http.StatusTooManyRequests:
	default:
		if r.StatusCode() < 500 {
			h.violate("acquire on instance %d: unexpected %s: %.200s", inst.idx, label, r.Body)
		}
	}
	return nil
}

// acquireAndVanish sends an acquire, reads the status line and headers of
// the answer, and goes away without reading the body: a 201 leaves a lease
// nobody knows of, which the reaper must reclaim at its expiry.
func (h *harness) acquireAndVanish(inst *instance, pool string, wait time.Duration, ttl int64, holder string) {
	const op = "vanish"
	epoch := inst.epoch.Load()
	ws := int64(wait / time.Second)
	req, err := client.NewAcquireLeaseRequest(inst.base, nil, client.AcquireLeaseRequest{
		Pool: &pool, WaitSeconds: &ws, TTLSeconds: &ttl, Holder: &holder,
	})
	if err != nil {
		h.violate("build request: %v", err)
		return
	}
	req.Header.Set("Authorization", "Bearer "+h.clientKey)
	ctx, cancel := context.WithTimeout(h.ctx, wait+clientSlack)
	defer cancel()
	resp, err := h.httpClient.Do(req.WithContext(ctx))
	disturbed := inst.epoch.Load() != epoch
	if err != nil {
		h.stats.count(op, "error before the answer")
		if !disturbed {
			h.violate("acquire (vanishing client) on instance %d: %v", inst.idx, err)
		}
		return
	}
	resp.Body.Close() // gone before the body
	h.stats.count(op, fmt.Sprintf("read only the status: %d", resp.StatusCode))
	if resp.StatusCode == http.StatusCreated {
		h.orphans.Add(1)
	}
	if resp.StatusCode >= 500 && resp.StatusCode != http.StatusServiceUnavailable {
		h.violate("acquire (vanishing client) on instance %d: %d", inst.idx, resp.StatusCode)
	}
}

// errLabel names a failed request: no answer in time, or a broken
// connection.
func errLabel(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Sprintf("no answer within %v", updateTimeout)
	}
	return "connection error"
}

// updateTimeout is the client timeout of a renew or release: an instance
// that has not answered by then hung (it may wait out its lock_timeout,
// 5 s by default, before it answers 503).
const updateTimeout = 10 * time.Second

// renew extends the lease; false when it is lost (410) or could not be
// renewed before it expired.
func (h *harness) renew(l *heldLease, ttl int64, rng *rand.Rand) bool {
	const op = "renew"
	deadline := l.g.expiresAt
	for {
		inst := h.pick(rng)
		if inst == nil {
			if time.Now().After(deadline) {
				h.stats.count(op, "no instance up before expiry")
				return false
			}
			time.Sleep(100 * time.Millisecond)
			continue
		}
		epoch := inst.epoch.Load()
		ctx, cancel := context.WithTimeout(h.ctx, updateTimeout)
		r, err := inst.client.RenewLeaseWithResponse(ctx, openapi_types.UUID(l.g.id), client.RenewLeaseRequest{TTLSeconds: &ttl})
		cancel()
		disturbed := inst.epoch.Load() != epoch
		switch {
		case err != nil:
			h.stats.count(op, errLabel(err))
			if !disturbed {
				h.violate("renew on instance %d: %s from a live instance: %v", inst.idx, errLabel(err), err)
			}
		case r.StatusCode() == http.StatusOK && r.JSON200 != nil:
			h.stats.count(op, "200")
			h.led.renewed(l.g, r.JSON200.ExpiresAt)
			return true
		default:
			label := h.checkProblem(op, inst, r.HTTPResponse, r.Body)
			h.stats.count(op, label)
			switch r.StatusCode() {
			case http.StatusGone:
				return false
			case http.StatusServiceUnavailable:
			default:
				if r.StatusCode() < 500 {
					h.violate("renew on instance %d: unexpected %s: %.200s", inst.idx, label, r.Body)
				}
				return false
			}
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Duration(100+rng.IntN(200)) * time.Millisecond)
	}
}

// release ends the lease (its holder let go first, in the ledger),
// retrying transient failures for up to 20 s.
func (h *harness) release(l *heldLease, rng *rand.Rand) {
	const op = "release"
	h.led.letGo(l.g)
	deadline := time.Now().Add(20 * time.Second)
	for {
		inst := h.pick(rng)
		if inst != nil {
			epoch := inst.epoch.Load()
			ctx, cancel := context.WithTimeout(h.ctx, updateTimeout)
			start := time.Now()
			r, err := inst.client.ReleaseLeaseWithResponse(ctx, openapi_types.UUID(l.g.id))
			h.stats.released(time.Since(start))
			cancel()
			disturbed := inst.epoch.Load() != epoch
			switch {
			case err != nil:
				h.stats.count(op, errLabel(err))
				if !disturbed {
					h.violate("release on instance %d: %s from a live instance: %v", inst.idx, errLabel(err), err)
				}
			case r.StatusCode() == http.StatusNoContent:
				h.stats.count(op, "204")
				return
			default:
				label := h.checkProblem(op, inst, r.HTTPResponse, r.Body)
				h.stats.count(op, label)
				switch r.StatusCode() {
				case http.StatusGone:
					return // it had expired: the holder learns it lost the device
				case http.StatusServiceUnavailable:
				default:
					if r.StatusCode() < 500 {
						h.violate("release on instance %d: unexpected %s: %.200s", inst.idx, label, r.Body)
					}
					return
				}
			}
		}
		if time.Now().After(deadline) {
			h.stats.count(op, "gave up after 20s of failures")
			return
		}
		time.Sleep(time.Duration(100+rng.IntN(200)) * time.Millisecond)
	}
}
