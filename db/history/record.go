package history

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// Recorder collects a history from concurrent clients.
type Recorder struct {
	mu  sync.Mutex
	ops []porcupine.Operation
}

// Now is the recorder's clock: wall time in µs, the clock PostgreSQL's
// timestamps are read from on the same machine.
func Now() int64 { return time.Now().UnixMicro() }

// Add records one operation; in.Call and in.Return must be set.
func (r *Recorder) Add(in Input, out Output) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, porcupine.Operation{
		ClientId: in.Client, Input: in, Output: out, Call: in.Call, Return: in.Return,
	})
}

// Operations returns a copy of the history so far.
func (r *Recorder) Operations() []porcupine.Operation {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]porcupine.Operation(nil), r.ops...)
}

// Result is the outcome of checking a history.
type Result struct {
	Verdict porcupine.CheckResult
	// Devices is how many partitions (devices) were checked.
	Devices int
	// Violations explains each device whose history is not linearizable:
	// the device, the operations around the point where every order
	// failed, and why each candidate next step was refused.
	Violations []string
	// Visualization is porcupine's HTML rendering of the history, written
	// when the history is not linearizable.
	Visualization string
}

// Check checks ops against the model, device by device, each within
// timeout. An illegal history is explained per device and visualized into
// a temporary file.
func Check(ops []porcupine.Operation, timeout time.Duration) Result {
	model := Model()
	parts := partitionByDevice(ops)
	res := Result{Verdict: porcupine.Ok, Devices: len(parts)}
	single := model
	single.Partition = nil
	for _, part := range parts {
		verdict, info := porcupine.CheckOperationsVerbose(single, part, timeout)
		switch verdict {
		case porcupine.Illegal:
			res.Verdict = porcupine.Illegal
			res.Violations = append(res.Violations, explain(part, info))
		case porcupine.Unknown:
			if res.Verdict == porcupine.Ok {
				res.Verdict = porcupine.Unknown
			}
		}
	}
	if res.Verdict == porcupine.Illegal {
		_, info := porcupine.CheckOperationsVerbose(model, ops, timeout)
		if f, err := os.CreateTemp("", "devalloc-history-*.html"); err == nil {
			if porcupine.Visualize(model, info, f) == nil {
				res.Visualization = f.Name()
			}
			f.Close()
		}
	}
	return res
}

// explain describes why one device's history failed: the longest order the
// checker could build, its last steps, and for each operation that could
// come next (its call before the earliest pending return) why the model
// refused it.
func explain(part []porcupine.Operation, info porcupine.LinearizationInfo) string {
	var longest []porcupine.Operation
	for _, partition := range info.PartialLinearizationsOperations() {
		for _, lin := range partition {
			if len(lin) > len(longest) {
				longest = lin
			}
		}
	}
	in := part[0].Input.(Input)
	var b strings.Builder
	fmt.Fprintf(&b, "device %s: %d operations, at most %d could be put in a legal order\n", in.Device, len(part), len(longest))
	state := State{}
	done := map[string]bool{}
	for _, op := range longest {
		_, state, _ = Step(state, op.Input.(Input), op.Output.(Output))
		done[opKey(op)] = true
	}
	from := max(0, len(longest)-6)
	b.WriteString("  last steps of the longest legal order:\n")
	for _, op := range longest[from:] {
		fmt.Fprintf(&b, "    %s\n", line(op))
	}
	pending := make([]porcupine.Operation, 0)
	for _, op := range part {
		if !done[opKey(op)] {
			pending = append(pending, op)
		}
	}
	sort.Slice(pending, func(i, j int) bool { return pending[i].Call < pending[j].Call })
	if len(pending) == 0 {
		return b.String()
	}
	firstReturn := pending[0].Return
	for _, op := range pending {
		firstReturn = min(firstReturn, op.Return)
	}
	fmt.Fprintf(&b, "  state then: %s\n  none of these could come next:\n", Model().DescribeState(state))
	for _, op := range pending {
		if op.Call > firstReturn {
			break
		}
		_, _, why := Step(state, op.Input.(Input), op.Output.(Output))
		if why == "" {
			why = "(legal here, but no order of the rest worked after it)"
		}
		fmt.Fprintf(&b, "    %s\n      %s\n", line(op), why)
	}
	return b.String()
}

func opKey(op porcupine.Operation) string {
	return fmt.Sprintf("%d/%d/%d/%v", op.ClientId, op.Call, op.Return, op.Input.(Input).Kind)
}

func line(op porcupine.Operation) string {
	return fmt.Sprintf("[%s .. %s] %s", ts(op.Call), ts(op.Return), Describe(op.Input.(Input), op.Output.(Output)))
}
