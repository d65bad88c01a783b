// Command openapi writes the API's OpenAPI documents into a directory:
// openapi.json (3.1, what the server serves at /openapi.json) and
// openapi-3.0.json (3.0, served at /openapi-3.0.json, for code generators).
// The committed copies live beside this file; `make generate` rewrites them
// and `make check-generated` fails when they are stale. They are exactly
// what `devalloc openapi --version 3.1|3.0` prints.
//
// It is a program of its own, not `go run ./cmd/devalloc openapi`, because
// devalloc's CLI is built on the Go client generated from these documents
// (httpapi/client): writing them must not need that client to compile.
//
// Usage: go run ./httpapi/openapi [-dir httpapi/openapi]
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/devalloc/devalloc/httpapi"
)

// files maps each OpenAPI version to the file it is written to.
var files = []struct{ version, name string }{
	{"3.1", "openapi.json"},
	{"3.0", "openapi-3.0.json"},
}

func main() {
	dir := flag.String("dir", "httpapi/openapi", "directory to write the documents into")
	flag.Parse()
	if err := write(*dir); err != nil {
		fmt.Fprintf(os.Stderr, "openapi: %v\n", err)
		os.Exit(1)
	}
}

// write renders every document before touching any file, and replaces each
// file by a rename, so a failure never leaves a half-written document.
func write(dir string) error {
	specs := make([][]byte, len(files))
	for i, f := range files {
		spec, err := httpapi.OpenAPI(f.version)
		if err != nil {
			return err
		}
		specs[i] = spec
	}
	for i, f := range files {
		path := filepath.Join(dir, f.name)
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, specs[i], 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, path); err != nil {
			_ = os.Remove(tmp)
			return err
		}
	}
	return nil
}
