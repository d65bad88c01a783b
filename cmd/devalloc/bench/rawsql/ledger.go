package rawsql

import (
	"fmt"
	"sync/atomic"
)

// ledger counts double allocations as the clients see them: for each
// device, how many clients hold it right now. A client that takes a device
// another client holds is one double allocation.
//
// A nil *ledger counts nothing (Floor and Notify need none).
type ledger struct {
	holders []atomic.Int32 // by device id: a fresh schema numbers them 1..devices
	doubles atomic.Int64
}

func newLedger(devices int) *ledger {
	return &ledger{holders: make([]atomic.Int32, devices+1)}
}

// take records that one more client holds dev.
func (l *ledger) take(dev int64) error {
	if l == nil {
		return nil
	}
	if dev < 1 || dev >= int64(len(l.holders)) {
		return fmt.Errorf("ledger: device id %d outside 1..%d", dev, len(l.holders)-1)
	}
	if l.holders[dev].Add(1) > 1 {
		l.doubles.Add(1)
	}
	return nil
}

// drop records that one client no longer holds dev. take has checked dev.
func (l *ledger) drop(dev int64) {
	if l == nil {
		return
	}
	l.holders[dev].Add(-1)
}

// doubleAllocations is how many takes found the device already held.
func (l *ledger) doubleAllocations() int {
	return int(l.doubles.Load())
}
