package httpapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"time"

	"github.com/danielgtaylor/huma/v2"
	"github.com/google/uuid"

	"github.com/devalloc/devalloc/db"
)

// List endpoints page with an opaque cursor: base64url (unpadded) of a small
// JSON object holding the sort key of the last row the previous page
// returned. The next page starts right after that key (keyset pagination),
// so rows added or removed meanwhile never shift a page, and a late page
// costs what the first does. Clients must pass next_cursor back unchanged;
// its content is not part of the contract.

// deviceCursor is a device's place in the list: its name.
type deviceCursor struct {
	Name string `json:"name"`
}

// leaseCursor is a lease's place in the list, newest first: acquired_at (in
// microseconds since the epoch, PostgreSQL's precision) and then the id.
type leaseCursor struct {
	AcquiredAtMicros int64     `json:"acquired_at_us"`
	ID               uuid.UUID `json:"id"`
}

func encodeCursor(v any) *string {
	b, _ := json.Marshal(v) // strings, integers and uuids always marshal
	s := base64.RawURLEncoding.EncodeToString(b)
	return &s
}

// decodeCursor fills v from a cursor; any error is a 422 at query.cursor.
func decodeCursor(raw string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(raw)
	if err == nil {
		dec := json.NewDecoder(bytes.NewReader(b))
		// A cursor of the other list (or a forged one) has other members.
		dec.DisallowUnknownFields()
		if err = dec.Decode(v); err == nil && dec.More() {
			err = errors.New("trailing data")
		}
	}
	if err != nil {
		return badCursor(raw)
	}
	return nil
}

// badCursor is the 422 for a cursor this list did not hand out.
func badCursor(raw string) error {
	return invalid([]error{&huma.ErrorDetail{
		Location: "query.cursor",
		Message:  "malformed cursor: pass the next_cursor of a previous page of this list unchanged",
		Value:    raw,
	}})
}

func nextDeviceCursor(next *string) *string {
	if next == nil {
		return nil
	}
	return encodeCursor(deviceCursor{Name: *next})
}

// deviceAfter decodes a devices cursor into the name to list after.
func deviceAfter(raw string) (string, error) {
	if raw == "" {
		return "", nil
	}
	var c deviceCursor
	if err := decodeCursor(raw, &c); err != nil {
		return "", err
	}
	if c.Name == "" || !storableText(c.Name) {
		return "", badCursor(raw)
	}
	return c.Name, nil
}

// maxCursorMicros is 10000-01-01T00:00:00Z in microseconds since the epoch.
const maxCursorMicros = 253402300800000000

func nextLeaseCursor(next *db.LeaseKey) *string {
	if next == nil {
		return nil
	}
	return encodeCursor(leaseCursor{AcquiredAtMicros: next.AcquiredAt.UnixMicro(), ID: next.ID})
}

// leaseAfter decodes a leases cursor into the key to list after.
func leaseAfter(raw string) (*db.LeaseKey, error) {
	if raw == "" {
		return nil, nil
	}
	var c leaseCursor
	if err := decodeCursor(raw, &c); err != nil {
		return nil, err
	}
	// Leases were acquired after 1970 and before 10000 AD; a forged time
	// outside that could be out of PostgreSQL's timestamptz range.
	if c.ID == uuid.Nil || c.AcquiredAtMicros < 0 || c.AcquiredAtMicros >= maxCursorMicros {
		return nil, badCursor(raw)
	}
	return &db.LeaseKey{AcquiredAt: time.UnixMicro(c.AcquiredAtMicros).UTC(), ID: c.ID}, nil
}
