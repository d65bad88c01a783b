// Package migrations embeds devalloc's goose SQL migrations so the binary
// carries its own schema.
package migrations

import "embed"

// FS holds the numbered migration files (00001_init.sql, ...).
//
//go:embed *.sql
var FS embed.FS
