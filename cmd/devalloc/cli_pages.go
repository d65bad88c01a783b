package main

import "context"

// maxPageSize is the largest page the list endpoints hand out.
const maxPageSize = 1000

// fetchPage gets one page of a list: at most limit rows after cursor (nil:
// from the start), and the cursor of the next page (nil on the last one).
type fetchPage[T any] func(ctx context.Context, limit int64, cursor *string) ([]T, *string, error)

// collect follows a list's next_cursor until it has max rows (0: all of
// them). more reports that rows beyond max exist.
func collect[T any](ctx context.Context, max int, fetch fetchPage[T]) (rows []T, more bool, err error) {
	var cursor *string
	for {
		size := int64(maxPageSize)
		if max > 0 {
			size = min(size, int64(max-len(rows)))
		}
		page, next, err := fetch(ctx, size, cursor)
		if err != nil {
			return nil, false, err
		}
		rows = append(rows, page...)
		if next == nil {
			return rows, false, nil
		}
		if max > 0 && len(rows) >= max {
			return rows, true, nil
		}
		cursor = next
	}
}
