package httpapi

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/danielgtaylor/huma/v2"
	"github.com/danielgtaylor/huma/v2/adapters/humago"
)

// storableText reports whether PostgreSQL can store s as text: valid UTF-8
// without NUL. Anything else would fail deep in a query as a server error,
// so it is refused at the edge with the field's name.
func storableText(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsRune(s, 0)
}

// checkText reports s at loc unless it is storable text.
func checkText(loc, s string) []error {
	if storableText(s) {
		return nil
	}
	return []error{&huma.ErrorDetail{
		Location: loc,
		Message:  "must be valid UTF-8 without NUL characters",
		Value:    strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", `\u0000`), "\uFFFD"),
	}}
}

// textMiddleware refuses, before any handler runs, input that is not
// storable text where no field check would see it: path, query values,
// the Idempotency-Key header, and a body that is not UTF-8 at all (RFC 8259
// requires it; Go's JSON decoder would quietly turn bad bytes into U+FFFD
// and store text the client never sent). It runs after authentication, so
// an anonymous caller learns nothing about validation.
func textMiddleware(api huma.API, maxBody int64) func(huma.Context, func(huma.Context)) {
	return func(ctx huma.Context, next func(huma.Context)) {
		u := ctx.URL()
		if !storableText(u.Path) {
			// No device or lease has such a name.
			writeProblem(api, ctx, problem(http.StatusNotFound, kindNotFound, "no such resource: names are valid UTF-8 without NUL"))
			return
		}
		var errs []error
		for key, values := range u.Query() {
			for _, v := range values {
				errs = append(errs, checkText("query."+key, v)...)
			}
		}
		errs = append(errs, checkText("header.Idempotency-Key", ctx.Header("Idempotency-Key"))...)
		if len(errs) > 0 {
			writeProblem(api, ctx, invalid(errs).(huma.StatusError))
			return
		}
		if ctx = readBody(api, ctx, maxBody); ctx != nil {
			next(ctx)
		}
	}
}

// readBody reads a body of up to maxBody bytes itself, to refuse one that
// is not UTF-8, and hands Huma a context whose body is that buffer. It
// returns nil after answering the request itself. A longer body is left
// for Huma to answer 413.
//
// The read runs under the same 5 s deadline Huma would set; reaching the
// end of the body makes net/http clear it again. Huma must then not set a
// new one (nothing would clear it, and net/http's background read would
// cancel a long-polling acquire when it expired), so the returned context
// ignores SetReadDeadline.
func readBody(api huma.API, ctx huma.Context, maxBody int64) huma.Context {
	r, _ := humago.Unwrap(ctx)
	if r == nil || r.Body == nil || r.Body == http.NoBody {
		return ctx
	}
	_ = ctx.SetReadDeadline(time.Now().Add(bodyReadTimeout))
	head, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		var netErr net.Error
		if errors.As(err, &netErr) && netErr.Timeout() {
			writeProblem(api, ctx, problem(http.StatusRequestTimeout, "", "request body read timeout"))
		} else {
			writeProblem(api, ctx, problem(http.StatusBadRequest, "", "cannot read the request body"))
		}
		return nil
	}
	if int64(len(head)) > maxBody {
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(head), r.Body), r.Body}
		return ctx
	}
	if !utf8.Valid(head) {
		writeProblem(api, ctx, problem(http.StatusBadRequest, "", "request body is not valid UTF-8 (JSON must be UTF-8, RFC 8259)"))
		return nil
	}
	return &bufferedBody{innerContext: ctx, body: bytes.NewReader(head)}
}

// bodyReadTimeout matches Huma's default body read deadline.
const bodyReadTimeout = 5 * time.Second

// innerContext names the embedded huma.Context: embedded as huma.Context
// its field would be called Context and hide the Context method.
type innerContext = huma.Context

// bufferedBody is a request context whose body has been read already.
type bufferedBody struct {
	innerContext
	body *bytes.Reader
}

func (b *bufferedBody) BodyReader() io.Reader { return b.body }

// SetReadDeadline is a no-op: the body is in memory, and a deadline on the
// connection now would only cut a long poll short.
func (b *bufferedBody) SetReadDeadline(time.Time) error { return nil }

// Unwrap lets humago.Unwrap reach the request beneath.
func (b *bufferedBody) Unwrap() huma.Context { return b.innerContext }
