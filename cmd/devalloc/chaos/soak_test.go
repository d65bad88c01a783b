//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// soakRow is one sample of the soak.
type soakRow struct {
	at       time.Duration
	rssKB    []int64
	conns    int
	idleInTx int
	grants   int
	errors   int // violations so far
	fault    string
}

// A soak: steady load (with a few vanishing clients and lapsing holders)
// for DEVALLOC_SOAK_DURATION (default 5m), a fault every 20 s in turns
// (pg_terminate_backend of every connection; kill -9 and restart of
// instance 2), and every 5 s a sample of each instance's RSS (VmRSS) and of
// the database's connections. Prints the samples as a table; fails like a
// scenario, and also when the RSS of an instance that was never restarted
// grew more than 50% from the 1-minute mark to the end.
func TestSoak(t *testing.T) {
	if os.Getenv("DEVALLOC_SOAK") == "" {
		t.Skip("run by make soak (DEVALLOC_SOAK=1; DEVALLOC_SOAK_DURATION, default 5m)")
	}
	duration := 5 * time.Minute
	if s := os.Getenv("DEVALLOC_SOAK_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("DEVALLOC_SOAK_DURATION=%q: %v", s, err)
		}
		duration = d
	}
	const sampleEvery, faultEvery = 5 * time.Second, 20 * time.Second

	h := newHarness(t, scenario{})
	h.addTCPDevices("dev", "farm", 6)
	h.addSlowDevices("slow", "farm", 1, 100*time.Millisecond)
	flapProbes := newCounter()
	addr, err := h.farm.flapDevice(time.Second, flapProbes)
	if err != nil {
		t.Fatal(err)
	}
	h.addDevice("flap-1", "farm", addr, "http")

	var mu sync.Mutex
	var rows []soakRow
	pendingFault := ""
	var lastConn connSample
	h.mu.Lock()
	h.onSample = func(s connSample) {
		mu.Lock()
		lastConn = s
		mu.Unlock()
	}
	h.mu.Unlock()
	sample := func() {
		mu.Lock()
		defer mu.Unlock()
		r := soakRow{at: time.Since(h.began), conns: lastConn.total, idleInTx: lastConn.idleInTx,
			grants: h.stats.get("acquire", "201"), fault: pendingFault}
		h.stats.mu.Lock()
		r.errors = h.stats.nViolations
		h.stats.mu.Unlock()
		for _, in := range h.insts {
			r.rssKB = append(r.rssKB, in.rssKB())
		}
		pendingFault = ""
		rows = append(rows, r)
	}
	restarts := make([]int, len(h.insts))

	load := h.startLoad(loadSpec{clients: 18, vanishWaitPct: 5, vanishRespPct: 3, stopRenewPct: 3, longHoldPct: 5})
	end := time.Now().Add(duration)
	nextSample, nextFault := time.Now().Add(sampleEvery), time.Now().Add(faultEvery)
	faultN := 0
	for time.Now().Before(end) {
		time.Sleep(100 * time.Millisecond)
		if time.Now().After(nextSample) {
			sample()
			nextSample = nextSample.Add(sampleEvery)
		}
		if time.Now().After(nextFault) {
			nextFault = nextFault.Add(faultEvery)
			var what string
			switch faultN % 2 {
			case 0:
				ctx, cancel := context.WithTimeout(h.ctx, 5*time.Second)
				n, err := h.db.terminateAll(ctx)
				cancel()
				if err != nil {
					t.Fatal(err)
				}
				h.dbFault(time.Now(), time.Now().Add(time.Second))
				what = fmt.Sprintf("terminate %d", n)
				h.fault("pg_terminate_backend of all %d connections", n)
			case 1:
				in := h.insts[2]
				if err := in.kill(); err != nil {
					t.Fatal(err)
				}
				h.fault("kill -9 instance 2")
				time.Sleep(time.Second)
				if err := in.start(h.ctx); err != nil {
					t.Fatal(err)
				}
				restarts[2]++
				what = "kill -9 #2"
			}
			faultN++
			mu.Lock()
			pendingFault = what
			mu.Unlock()
		}
	}
	load.finish()
	sample()

	// The table.
	var b strings.Builder
	b.WriteString("soak samples (RSS in MiB; instance 2 is killed and restarted every 40 s):\n")
	fmt.Fprintf(&b, "  %7s", "t")
	for i := range h.insts {
		fmt.Fprintf(&b, " %8s", fmt.Sprintf("rss%d", i))
	}
	fmt.Fprintf(&b, " %6s %8s %7s %6s  %s\n", "conns", "idle-tx", "grants", "viol", "fault")
	for _, r := range rows {
		fmt.Fprintf(&b, "  %6.0fs", r.at.Seconds())
		for _, kb := range r.rssKB {
			fmt.Fprintf(&b, " %8.1f", float64(kb)/1024)
		}
		fmt.Fprintf(&b, " %6d %8d %7d %6d  %s\n", r.conns, r.idleInTx, r.grants, r.errors, r.fault)
	}
	h.note("%s", strings.TrimRight(b.String(), "\n"))

	// RSS growth from the 1-minute mark to the end, for the instances that
	// ran throughout.
	var atMinute *soakRow
	for i := range rows {
		if rows[i].at >= time.Minute {
			atMinute = &rows[i]
			break
		}
	}
	last := rows[len(rows)-1]
	if atMinute == nil || atMinute == &rows[len(rows)-1] {
		h.note("soak shorter than a minute and a sample: RSS growth not judged")
	} else {
		for i := range h.insts {
			if restarts[i] > 0 {
				continue
			}
			from, to := atMinute.rssKB[i], last.rssKB[i]
			growth := float64(to-from) / float64(max(from, 1))
			h.note("instance %d RSS: %.1f MiB at %.0fs, %.1f MiB at the end (%+.0f%%)", i, float64(from)/1024, atMinute.at.Seconds(), float64(to)/1024, growth*100)
			if growth > 0.5 {
				h.violate("instance %d RSS grew %.0f%% from %.1f MiB at %.0fs to %.1f MiB at the end (bound 50%%)",
					i, growth*100, float64(from)/1024, atMinute.at.Seconds(), float64(to)/1024)
			}
		}
	}
	h.finish()
}
