# devalloc: build, run, test and lint. Needs Go and, for run/test, a
# PostgreSQL (localhost:5432 by default). Tools run pinned through the Go
# toolchain (go run module@version); nothing is downloaded as a binary.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

GO          ?= go
SQLC        := $(GO) run github.com/sqlc-dev/sqlc/cmd/sqlc@v1.31.1
OAPI_CODEGEN := $(GO) run github.com/oapi-codegen/oapi-codegen/v2/cmd/oapi-codegen@v2.8.2
STATICCHECK := $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2

BIN          := bin/devalloc
VERSION      ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS      := -X main.version=$(VERSION)
TEST_TIMEOUT ?= 20m
# make chaos / make soak: the fault harness (cmd/devalloc/chaos, build tag
# chaos). CHAOS_TIMEOUT bounds the whole chaos run; SOAK_DURATION is how
# long the soak runs (DEVALLOC_SOAK_DURATION).
CHAOS_TIMEOUT ?= 20m
SOAK_DURATION ?= 5m

# make run: the database (created when missing), the listen address and the
# number of simulated demo devices.
DATABASE_URL ?= postgres://postgres@localhost:5432/devalloc?sslmode=disable
ADDR         ?= 127.0.0.1:8080
DEMO         ?= 5

.PHONY: help run build test verify bench chaos soak generate check-generated lint vet fmt-check staticcheck fmt clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

run: build ## serve on ADDR (127.0.0.1:8080) against DATABASE_URL with DEMO (5) demo devices
	DATABASE_URL='$(DATABASE_URL)' ./$(BIN) serve --addr '$(ADDR)' --demo $(DEMO)

build: ## build bin/devalloc
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/devalloc

test: ## run every test with the race detector (TEST_DATABASE_URL, else localhost:5432, else testcontainers)
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...

# make verify: the history checker (db/history_test.go) long: VERIFY_SEEDS
# seeds of VERIFY_DURATION each, every history checked with porcupine.
# DEVALLOC_HISTORY_SEED=n reruns one seed. make test runs it short (2 seeds).
VERIFY_SEEDS    ?= 6
VERIFY_DURATION ?= 45s

verify: ## the randomized history checker, long: VERIFY_SEEDS (6) seeds of VERIFY_DURATION (45s) under faults, with the race detector
	DEVALLOC_HISTORY_LONG=1 DEVALLOC_HISTORY_SEEDS='$(VERIFY_SEEDS)' DEVALLOC_HISTORY_DURATION='$(VERIFY_DURATION)' \
		$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) -v -run '^TestHistoryLinearizable$$' ./db

# make bench: every scenario of "devalloc bench" against BENCH_DATABASE_URL
# (created when missing; the bench adds and removes its own pools), the
# report and the README's plots into docs/bench. About 8 minutes on 2 cores.
BENCH_DATABASE_URL ?= postgres://postgres@localhost:5432/devalloc_bench?sslmode=disable
BENCH_ARGS ?=

bench: build ## run devalloc bench (all scenarios); report and plots into docs/bench
	mkdir -p docs/bench
	DATABASE_URL='$(BENCH_DATABASE_URL)' ./$(BIN) bench --out docs/bench/report.json --plot docs/bench $(BENCH_ARGS)

chaos: ## fault scenarios against real serve processes (kill -9, pg_terminate_backend, a PostgreSQL restart, ...); a few minutes
	$(GO) test -tags chaos -count=1 -timeout $(CHAOS_TIMEOUT) -v -run '^TestChaos' ./cmd/devalloc/chaos/

soak: ## steady load with periodic faults for SOAK_DURATION (5m); prints RSS and connection samples
	DEVALLOC_SOAK=1 DEVALLOC_SOAK_DURATION='$(SOAK_DURATION)' $(GO) test -tags chaos -count=1 -timeout 3h -v -run '^TestSoak$$' ./cmd/devalloc/chaos/

# Everything generated, and committed: db/internal/dbsqlc (sqlc, from queries/ and
# migrations/), the OpenAPI documents in httpapi/openapi (from the Huma
# operations in httpapi) and the Go client httpapi/client/client.gen.go
# (oapi-codegen, from the 3.0 document). In this order: the documents are
# rendered by code that uses db/internal/dbsqlc, and the client is generated from them.
# db/schema.sql is the schema after every migration, dumped from a freshly
# migrated database (the tests' own: TEST_DATABASE_URL, else localhost:5432,
# else testcontainers), for DBAs to read in one file.
GENERATED := db/internal/dbsqlc httpapi/openapi httpapi/client db/schema.sql

generate: ## regenerate db/internal/dbsqlc (sqlc), httpapi/openapi/*.json, httpapi/client/client.gen.go (oapi-codegen) and db/schema.sql
	$(SQLC) generate
	$(GO) test ./db/migrate -run '^TestSchemaFile$$' -count=1 -args -write-schema
	$(GO) run ./httpapi/openapi -dir httpapi/openapi
	$(OAPI_CODEGEN) -config httpapi/client/oapi-codegen.yaml httpapi/openapi/openapi-3.0.json

# Generates into a scratch copy of the tree and compares, so it catches
# changed, missing and left-over files and never touches the work tree. The
# copy loses every generated file first (hand-written ones stay), so a file
# that generation no longer writes shows up as left over.
check-generated: ## fail when any generated file is not what `make generate` writes now
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	tar --exclude=./.git --exclude=./bin -cf - . | tar -xf - -C "$$tmp"; \
	rm -rf "$$tmp/db/internal/dbsqlc" "$$tmp"/httpapi/openapi/*.json "$$tmp"/httpapi/client/*.gen.go "$$tmp/db/schema.sql"; \
	$(MAKE) --no-print-directory -C "$$tmp" generate >/dev/null; \
	stale=0; \
	for d in $(GENERATED); do \
		if ! diff -ru "$$d" "$$tmp/$$d"; then stale=1; fi; \
	done; \
	if [ "$$stale" -ne 0 ]; then \
		echo "check-generated: generated files are stale (- committed, + generated); run 'make generate' and commit the result" >&2; \
		exit 1; \
	fi; \
	echo "check-generated: $(GENERATED) are up to date"

lint: vet fmt-check staticcheck ## go vet, gofmt check and staticcheck

vet:
	$(GO) vet ./...
	$(GO) vet -tags chaos ./cmd/devalloc/chaos/

fmt-check:
	@out=$$(gofmt -l $$(find . -name '*.go' -not -path './.git/*')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:" >&2; echo "$$out" >&2; exit 1; fi

staticcheck:
	$(STATICCHECK) ./...
	$(STATICCHECK) -tags chaos ./cmd/devalloc/chaos/

fmt: ## gofmt every Go file in place
	gofmt -w $$(find . -name '*.go' -not -path './.git/*')

clean: ## remove build output
	rm -rf bin
