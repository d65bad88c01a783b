package db

import (
	"math/rand/v2"
	"time"
)

// jitter spreads d by ±20%, so instances started together do not query in
// lockstep.
func jitter(d time.Duration) time.Duration {
	return d*8/10 + rand.N(d*4/10+1)
}
