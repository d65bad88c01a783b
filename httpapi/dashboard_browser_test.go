package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/google/uuid"

	"github.com/devalloc/devalloc/db"
	"github.com/devalloc/devalloc/db/devalloctype"
	"github.com/devalloc/devalloc/httpapi/apitest"
)

// chromium finds the browser for the dashboard test: DEVALLOC_CHROMIUM, or
// chromium on the PATH (Debian: apt-get install chromium). Without one the
// test is skipped, unless DEVALLOC_REQUIRE_BROWSER=1 (CI sets it) makes
// that a failure.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("DEVALLOC_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("DEVALLOC_REQUIRE_BROWSER") == "1" {
		t.Fatal("no Chromium found (set DEVALLOC_CHROMIUM, or apt-get install chromium)")
	}
	t.Skip("no Chromium found; the dashboard's browser test needs one (apt-get install chromium)")
	return ""
}

// leaseCall sends one API request with key and decodes the answer into out.
func leaseCall(t *testing.T, method, url, key string, body any, out any) {
	t.Helper()
	var buf bytes.Buffer
	if body != nil {
		if err := json.NewEncoder(&buf).Encode(body); err != nil {
			t.Fatal(err)
		}
	}
	req, err := http.NewRequestWithContext(t.Context(), method, url, &buf)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		t.Fatalf("%s %s: %d", method, url, resp.StatusCode)
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatal(err)
		}
	}
}

// The dashboard in headless Chromium: sign in with an API key, see the
// device, see it leased within 2 s of an acquire through the API and idle
// again within 2 s of its release, with the events listed.
func TestDashboardInABrowser(t *testing.T) {
	browser := chromium(t)
	srv := apitest.Start(t, apitest.Options{})
	key := srv.Key(t, "ops", db.RoleAdmin)
	if _, err := srv.Alloc.CreateDevice(t.Context(), db.DeviceSpec{Name: "d1", Pool: "lab", Address: "10.0.0.1:5555", Probe: "none"}); err != nil {
		t.Fatal(err)
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser),
		chromedp.NoSandbox,
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(t.Context(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(allocCtx)
	defer cancel()
	ctx, cancelRun := context.WithTimeout(ctx, 60*time.Second)
	defer cancelRun()

	if err := chromedp.Do(ctx,
		chromedp.Navigate(srv.URL+"/dashboard"),
		chromedp.WaitVisible(chromedp.CSS("#key")),
		chromedp.SendKeys(chromedp.CSS("#key"), key),
		chromedp.Click(chromedp.CSS("#signin")),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-device="d1"][data-state="idle"]`)),
	); err != nil {
		t.Fatalf("sign in and see d1 idle: %v", err)
	}

	// waitShown waits, at most 2 s, for the device row in state.
	waitShown := func(state string) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if err := chromedp.Do(wctx, chromedp.WaitVisible(chromedp.CSS(`tr[data-device="d1"][data-state="`+state+`"]`))); err != nil {
			t.Fatalf("the dashboard did not show d1 %s within 2 s: %v", state, err)
		}
	}
	var lease struct {
		ID string `json:"id"`
	}
	leaseCall(t, http.MethodPost, srv.URL+"/v1/leases", key, map[string]any{"pool": "lab", "holder": "ci job 7"}, &lease)
	waitShown("leased")
	holder, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`tr[data-device="d1"] td:nth-child(4)`)))
	if err != nil || holder != "ci job 7 (ops)" {
		t.Fatalf("holder cell %q, %v", holder, err)
	}
	leaseCall(t, http.MethodDelete, srv.URL+"/v1/leases/"+lease.ID, key, nil, nil)
	waitShown("idle")

	waitEvent(t, ctx, "d1 acquired by ci job 7")
	waitEvent(t, ctx, "d1 released (lease of ci job 7)")

	// An admin puts the device into maintenance from the page.
	if err := chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`tr[data-device="d1"] button`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-device="d1"][data-state="maintenance"]`)),
	); err != nil {
		t.Fatalf("maintenance from the page: %v", err)
	}
	// Back to idle, and an admin revokes someone's lease from the page.
	if err := chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`tr[data-device="d1"] button`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-device="d1"][data-state="idle"]`)),
	); err != nil {
		t.Fatalf("back to idle from the page: %v", err)
	}
	other := srv.Key(t, "ci", db.RoleClient)
	leaseCall(t, http.MethodPost, srv.URL+"/v1/leases", other, map[string]any{"pool": "lab"}, &lease)
	waitShown("leased")
	if err := chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(`tr[data-device="d1"] button:nth-of-type(2)`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-device="d1"][data-state="idle"]`)),
	); err != nil {
		t.Fatalf("revoke from the page: %v", err)
	}
	got, err := srv.Alloc.GetLease(t.Context(), uuid.MustParse(lease.ID))
	if err != nil || got.EndReason != devalloctype.EndRevoked {
		t.Fatalf("the lease after revoke from the page: %+v, %v", got, err)
	}
	// The events say how each lease ended.
	waitEvent(t, ctx, "d1 revoked (lease of ci)")
}

// waitEvent waits, at most 2 s, for the page's events to mention what.
func waitEvent(t *testing.T, ctx context.Context, what string) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	quoted, _ := json.Marshal(what)
	if _, err := chromedp.Run(wctx, chromedp.Poll[bool](`document.getElementById("events").textContent.includes(`+string(quoted)+`)`)); err != nil {
		text, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#events")))
		t.Fatalf("no event %q within 2 s: %v; events %q", what, err, text)
	}
}
