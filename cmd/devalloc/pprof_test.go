package main

import (
	"net"
	"net/http"
	"testing"

	"github.com/devalloc/devalloc/db/dbtest"
)

// --pprof-addr serves the profiles on their own address, never on the
// API's.
func TestServePprofOnItsOwnAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	base, _, _, _ := startServe(t, dbtest.NewDB(t), "--demo", "1", "--pprof-addr", addr)
	for url, want := range map[string]int{
		"http://" + addr + "/debug/pprof/": http.StatusOK,
		base + "/debug/pprof/":             http.StatusNotFound,
	} {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", url, resp.StatusCode, want)
		}
	}
}
