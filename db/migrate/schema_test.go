package migrate_test

import (
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/devalloc/devalloc/db/dbtest"
	"github.com/devalloc/devalloc/db/migrate"
)

// schemaFile is the committed schema, relative to this package.
const schemaFile = "../schema.sql"

var writeSchema = flag.Bool("write-schema", false, "write "+schemaFile+" from a freshly migrated database (make generate)")

// dumpOf connects to url and dumps its devalloc schema.
func dumpOf(t *testing.T, url string) string {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	s, err := migrate.Schema(t.Context(), conn)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// db/schema.sql is what the migrations build today: make generate writes
// it (-write-schema), and a migration without a regenerated file fails
// here as well as in make check-generated.
func TestSchemaFile(t *testing.T) {
	dumped := dumpOf(t, dbtest.NewDB(t))
	if *writeSchema {
		if err := os.WriteFile(schemaFile, []byte(dumped), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	committed, err := os.ReadFile(schemaFile)
	if err != nil {
		t.Fatalf("%v: run make generate", err)
	}
	if file, server := migrate.FileMajor(string(committed)), migrate.FileMajor(dumped); file != server {
		t.Skipf("db/schema.sql was dumped from PostgreSQL %d and this server is %d, which renders functions and views its own way: compared only on %d (CI, testcontainers)",
			file, server, file)
	}
	if string(committed) != dumped {
		t.Errorf("db/schema.sql is not the migrated schema (first difference at line %d): run make generate and commit it",
			firstDifferentLine(string(committed), dumped))
	}
}

// The dump builds the schema it was read from: loaded into a database
// without the devalloc schema, it dumps to the same text. So the file
// leaves nothing out that a dump shows, and its order creates every
// object after the objects it needs.
func TestSchemaFileBuildsTheMigratedSchema(t *testing.T) {
	url := dbtest.NewDB(t)
	dumped := dumpOf(t, url)
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	if _, err := conn.Exec(t.Context(), "DROP SCHEMA devalloc CASCADE"); err != nil {
		t.Fatal(err)
	}
	// No arguments: the simple protocol, which runs many statements.
	if _, err := conn.Exec(t.Context(), dumped); err != nil {
		t.Fatalf("loading the dump: %v", err)
	}
	again := dumpOf(t, url)
	if again != dumped {
		t.Errorf("the dump, loaded and dumped again, differs at line %d:\n%s\nwas\n%s",
			firstDifferentLine(dumped, again), lineAt(again, firstDifferentLine(dumped, again)), lineAt(dumped, firstDifferentLine(dumped, again)))
	}
	for _, want := range []string{"CREATE TABLE devalloc.leases", "CREATE VIEW devalloc.active_leases",
		"CREATE OR REPLACE FUNCTION devalloc.confirm_handoff_until", "CREATE TRIGGER leases_tell_twins", "COMMENT ON COLUMN devalloc.leases.handoff_pending"} {
		if !strings.Contains(dumped, want) {
			t.Errorf("the dump has no %q", want)
		}
	}
}

func firstDifferentLine(a, b string) int {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := range min(len(al), len(bl)) {
		if al[i] != bl[i] {
			return i + 1
		}
	}
	return min(len(al), len(bl)) + 1
}

func lineAt(s string, n int) string {
	lines := strings.Split(s, "\n")
	if n-1 < len(lines) {
		return lines[n-1]
	}
	return ""
}
