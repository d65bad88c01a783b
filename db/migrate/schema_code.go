package migrate

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// dumpFunctions writes every function as its current definition, by name
// and arguments. Tables come first: some return a table's row type.
func dumpFunctions(ctx context.Context, q Querier, b *strings.Builder) error {
	rows, err := q.Query(ctx, `
		SELECT pg_get_functiondef(p.oid),
		       format('%I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)),
		       obj_description(p.oid, 'pg_proc')
		FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
		WHERE n.nspname = $1 AND p.prokind = 'f'
		ORDER BY p.proname, pg_get_function_identity_arguments(p.oid)`, schemaName)
	if err != nil {
		return err
	}
	section(b, "Functions")
	for rows.Next() {
		var def, signature string
		var text *string
		if err := rows.Scan(&def, &signature, &text); err != nil {
			return err
		}
		fmt.Fprintf(b, "\n%s;\n", strings.TrimRight(def, "\n"))
		comment(b, "FUNCTION "+signature, text)
	}
	return rows.Err()
}

// view is one view and the views it reads.
type view struct {
	oid        uint32
	name, def  string
	comment    *string
	dependsOn  []uint32
	columns    []string
	colComment []*string
}

// dumpViews writes every view after the views it reads, otherwise by name.
func dumpViews(ctx context.Context, q Querier, b *strings.Builder) error {
	rows, err := q.Query(ctx, `
		SELECT v.oid, format('%I.%I', n.nspname, v.relname), pg_get_viewdef(v.oid, true),
		       obj_description(v.oid, 'pg_class'),
		       ARRAY(SELECT DISTINCT d.refobjid::int8 FROM pg_rewrite r JOIN pg_depend d ON d.objid = r.oid
		             JOIN pg_class u ON u.oid = d.refobjid
		             WHERE r.ev_class = v.oid AND d.classid = 'pg_rewrite'::regclass
		               AND d.refobjid <> v.oid AND u.relkind = 'v'),
		       ARRAY(SELECT quote_ident(a.attname) FROM pg_attribute a
		             WHERE a.attrelid = v.oid AND a.attnum > 0 ORDER BY a.attnum),
		       ARRAY(SELECT col_description(v.oid, a.attnum) FROM pg_attribute a
		             WHERE a.attrelid = v.oid AND a.attnum > 0 ORDER BY a.attnum)
		FROM pg_class v JOIN pg_namespace n ON n.oid = v.relnamespace
		WHERE n.nspname = $1 AND v.relkind = 'v'
		ORDER BY v.relname`, schemaName)
	if err != nil {
		return err
	}
	views, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (view, error) {
		var v view
		var deps []int64
		err := r.Scan(&v.oid, &v.name, &v.def, &v.comment, &deps, &v.columns, &v.colComment)
		for _, d := range deps {
			v.dependsOn = append(v.dependsOn, uint32(d))
		}
		return v, err
	})
	if err != nil {
		return err
	}
	section(b, "Views")
	written := map[uint32]bool{}
	var write func(v view)
	byOID := map[uint32]view{}
	for _, v := range views {
		byOID[v.oid] = v
	}
	write = func(v view) {
		if written[v.oid] {
			return
		}
		written[v.oid] = true // views cannot depend on each other in a cycle
		for _, d := range v.dependsOn {
			if dep, ok := byOID[d]; ok {
				write(dep)
			}
		}
		fmt.Fprintf(b, "\nCREATE VIEW %s AS\n%s\n", v.name, strings.TrimRight(v.def, "\n"))
		comment(b, "VIEW "+v.name, v.comment)
		for i, c := range v.columns {
			comment(b, "COLUMN "+v.name+"."+c, v.colComment[i])
		}
	}
	for _, v := range views {
		write(v)
	}
	return nil
}

// dumpTriggers writes every trigger a user made, by table and name.
func dumpTriggers(ctx context.Context, q Querier, b *strings.Builder) error {
	rows, err := q.Query(ctx, `
		SELECT pg_get_triggerdef(t.oid, true), format('%I ON %I.%I', t.tgname, n.nspname, c.relname),
		       obj_description(t.oid, 'pg_trigger')
		FROM pg_trigger t
		JOIN pg_class c ON c.oid = t.tgrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND NOT t.tgisinternal
		ORDER BY c.relname, t.tgname`, schemaName)
	if err != nil {
		return err
	}
	section(b, "Triggers")
	for rows.Next() {
		var def, target string
		var text *string
		if err := rows.Scan(&def, &target, &text); err != nil {
			return err
		}
		fmt.Fprintf(b, "\n%s;\n", def)
		comment(b, "TRIGGER "+target, text)
	}
	return rows.Err()
}
