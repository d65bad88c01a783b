package main

import (
	"fmt"
	"io"

	"github.com/devalloc/devalloc/httpapi"
)

// runOpenAPI is "devalloc openapi": it prints the API's OpenAPI document,
// the same one the server publishes, without a database.
func runOpenAPI(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("openapi", "openapi [--version 3.0|3.1]", stderr)
	var version string
	fs.stringVar(&version, "version", "DEVALLOC_OPENAPI_VERSION", "3.1", "OpenAPI version of the document: 3.1, or 3.0 for older code generators")
	if err := fs.parse(args); err != nil {
		return err
	}
	if err := fs.noArgs(); err != nil {
		return err
	}
	if version != "3.0" && version != "3.1" {
		return usageError{error: fmt.Errorf("--version %q: want 3.0 or 3.1", version)}
	}
	spec, err := httpapi.OpenAPI(version)
	if err != nil {
		return fmt.Errorf("render OpenAPI %s: %w", version, err)
	}
	if _, err := stdout.Write(spec); err != nil {
		return err
	}
	if len(spec) > 0 && spec[len(spec)-1] != '\n' {
		_, err = io.WriteString(stdout, "\n")
	}
	return err
}
