// Package jitter spreads the periods of devalloc's background loops.
package jitter

import (
	"math/rand/v2"
	"time"
)

// Spread spreads d by ±20%, so instances started together do not query in
// lockstep.
func Spread(d time.Duration) time.Duration {
	return d*8/10 + rand.N(d*4/10+1)
}
