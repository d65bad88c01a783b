package bench

import "time"

// cmpOr is v, or def when v is not positive: in the options structs the
// zero value means "the default", so a command's unset flags can pass 0 through.
func cmpOr[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}
