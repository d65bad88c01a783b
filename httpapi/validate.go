package httpapi

import (
	"fmt"
	"regexp"
	"sort"
	"time"

	"github.com/danielgtaylor/huma/v2"
)

// Checks Huma's struct tags cannot express. They report the way Huma's own
// validation does (422, one detail per bad field, with its location), so a
// client sees one error format whatever caught the mistake.

const (
	maxLabels        = 32
	maxLabelValue    = 256
	labelKeyRuleText = "1-63 characters of A-Z a-z 0-9 . _ / -"
)

var labelKeyRe = regexp.MustCompile(`^[A-Za-z0-9._/-]{1,63}$`)

// checkLabels reports every bad label key at loc (e.g. "body.labels").
// and every value that is not storable text. Counts and value lengths are
// already enforced from Labels' schema.
func checkLabels(loc string, l Labels) []error {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys) // a stable order for the client
	var errs []error
	for _, k := range keys {
		if !labelKeyRe.MatchString(k) {
			errs = append(errs, &huma.ErrorDetail{
				Location: loc + "." + k,
				Message:  "label key must be " + labelKeyRuleText,
				Value:    k,
			})
			continue
		}
		errs = append(errs, checkText(loc+"."+k, l[k])...)
	}
	return errs
}

// checkSeconds reports n at loc unless it is within 0..max; zero means
// "not given" and is for the caller's tags (minimum) to judge.
func checkSeconds(loc string, n int64, limit time.Duration, what string) []error {
	if n <= 0 || n <= int64(limit/time.Second) {
		return nil
	}
	return []error{&huma.ErrorDetail{
		Location: loc,
		Message:  fmt.Sprintf("expected number <= %d (the server's %s)", int64(limit/time.Second), what),
		Value:    n,
	}}
}

// invalid wraps field errors in the 422 Huma itself uses for bad input; nil
// when there are none.
func invalid(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return huma.Error422UnprocessableEntity("validation failed", errs...)
}
