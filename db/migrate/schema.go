package migrate

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Querier is what Schema reads the catalog through: a connection or a pool.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// schemaName is the schema every migration writes to.
const schemaName = "devalloc"

// schemaHeader opens the schema file: what it is, and what it is not.
const schemaHeader = `-- The devalloc schema as it stands after every migration in migrations/:
-- tables with their constraints and comments, indexes, functions, views and
-- triggers, in an order that builds it. Written by ` + "`make generate`" + ` from a
-- migrated database (db/migrate/schema.go); do not edit it. It is for
-- reading (one file instead of a function redefined across migrations): a
-- database is built and upgraded by the migrations, never from this file.
-- goose's own bookkeeping table (devalloc.goose_db_version) is left out.
`

// serverMajorLine names the PostgreSQL major version the text came from:
// the catalog's own rendering of a function or a view may change between
// majors, so the file is compared only against a server of the same one.
const serverMajorLine = "-- Dumped from PostgreSQL %d."

// Schema writes the devalloc schema in the database q reaches as SQL that
// builds it: what a DBA reads instead of every migration in turn. Objects
// come in an order that creates them (tables before the functions that
// return their rows, functions before the views and triggers that call
// them), each group sorted by name so the text changes only when the
// schema does.
func Schema(ctx context.Context, q Querier) (string, error) {
	var b strings.Builder
	b.WriteString(schemaHeader)
	major, err := ServerMajor(ctx, q)
	if err != nil {
		return "", err
	}
	fmt.Fprintf(&b, serverMajorLine+"\n", major)
	steps := []struct {
		what string
		dump func(context.Context, Querier, *strings.Builder) error
	}{
		{"schema", dumpSchemaItself},
		{"tables", dumpTables},
		{"foreign keys", dumpForeignKeys},
		{"indexes", dumpIndexes},
		{"functions", dumpFunctions},
		{"views", dumpViews},
		{"triggers", dumpTriggers},
	}
	for _, s := range steps {
		if err := s.dump(ctx, q, &b); err != nil {
			return "", fmt.Errorf("dump the %s of schema %s: %w", s.what, schemaName, err)
		}
	}
	return b.String(), nil
}

// ServerMajor is the major version of the PostgreSQL server q reaches.
func ServerMajor(ctx context.Context, q Querier) (int, error) {
	rows, err := q.Query(ctx, `SELECT current_setting('server_version_num')::int / 10000`)
	if err != nil {
		return 0, fmt.Errorf("server version: %w", err)
	}
	major, err := pgx.CollectExactlyOneRow(rows, pgx.RowTo[int])
	if err != nil {
		return 0, fmt.Errorf("server version: %w", err)
	}
	return major, nil
}

// FileMajor is the PostgreSQL major version a schema text says it was
// dumped from, or 0 when it does not say.
func FileMajor(text string) int {
	for _, line := range strings.Split(text, "\n") {
		var major int
		if _, err := fmt.Sscanf(line, serverMajorLine, &major); err == nil {
			return major
		}
	}
	return 0
}

// section starts a group of objects under a heading.
func section(b *strings.Builder, title string) {
	fmt.Fprintf(b, "\n-- %s\n-- %s\n", title, strings.Repeat("-", len(title)))
}

// comment writes COMMENT ON target when the object has one.
func comment(b *strings.Builder, target string, text *string) {
	if text != nil {
		fmt.Fprintf(b, "COMMENT ON %s IS %s;\n", target, literal(*text))
	}
}

// literal quotes s as an SQL string literal (standard_conforming_strings).
func literal(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

func dumpSchemaItself(ctx context.Context, q Querier, b *strings.Builder) error {
	var text *string
	rows, err := q.Query(ctx, `SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = $1`, schemaName)
	if err != nil {
		return err
	}
	found := false
	for rows.Next() {
		found = true
		if err := rows.Scan(&text); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("no schema %s: the database is not migrated", schemaName)
	}
	fmt.Fprintf(b, "\nCREATE SCHEMA %s;\n", schemaName)
	comment(b, "SCHEMA "+schemaName, text)
	return nil
}
