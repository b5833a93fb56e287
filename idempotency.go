package redisservice

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/vevurn/redisservice/internal/telemetry"
)

// IdempotencyConfig configures [Service.IdempotencyMiddleware]. The zero
// value is usable; every default is documented on its field.
type IdempotencyConfig struct {
	// Header is the request header that carries the key. The default is
	// "Idempotency-Key".
	Header string

	// TTL is how long a response is kept and replayed. The default is
	// 24 hours.
	TTL time.Duration

	// Methods are the methods the middleware covers; others pass through
	// untouched. The default is POST and PATCH.
	Methods []string

	// Required answers a covered request without the header 400. By
	// default such a request runs unprotected.
	Required bool

	// Scope returns the client a request comes from (a user id, an API
	// key), so that one client's key never replays another's response.
	// nil, or "", is one space for all.
	Scope func(*http.Request) string

	// MaxBodyBytes is the largest request body accepted with a key; a
	// larger one is answered 413. The default is 1 MiB.
	MaxBodyBytes int64

	// FailOpen runs the handler without protection when Redis cannot be
	// asked. By default the request is answered 503 with Retry-After.
	FailOpen bool

	lease time.Duration // the in-flight mark's lease; zero: idemLease
}

const (
	idemLease        = 30 * time.Second // the in-flight mark's default lease
	idemMaxBody      = 1 << 20          // MaxBodyBytes' default
	idemMaxKey       = 256              // the longest key accepted, in bytes
	idemReplayHeader = "Idempotent-Replayed"
)

// IdempotencyMiddleware returns middleware that makes covered requests
// (POST and PATCH by default) carrying an Idempotency-Key
// (draft-ietf-httpapi-idempotency-key-header-07: a structured-field
// string, or a bare token) run at most once, across every instance that
// shares the Redis. The first request runs; its status, headers (but
// hop-by-hop ones and Set-Cookie) and body are kept for TTL, and a retry
// with the same key and the same request (method, path and query, and the
// SHA-256 of the body) gets them replayed byte for byte, with
// "Idempotent-Replayed: true", without running the handler. The same key
// with another request is answered 422, while the first still runs 409, a
// malformed key (or a missing one with Required) 400, a body over
// MaxBodyBytes 413: each with an RFC 9457 problem+json body.
//
// A 5xx response, a panic (which goes on after the key is freed) or a
// handler that did not return is not kept: the key is freed, and a retry
// runs again. A stored response that does not decode is dropped and
// answered 409 ("corrupt"); a response that could not be stored (a Redis
// error, or the lease lost) was still sent ("store_failed"): either way a
// retry runs again. The in-flight mark is a 30 s lease, renewed while the
// handler runs. A request costs one round trip to claim its key (or read
// the stored response) and one to store the response. When Redis cannot be asked, the request is answered
// 503 with Retry-After, or with FailOpen runs unprotected. It panics, when
// called, on a negative TTL or MaxBodyBytes. Detail: docs/idempotency-and-locks.md.
func (s *Service) IdempotencyMiddleware(cfg IdempotencyConfig) func(http.Handler) http.Handler {
	cfg = cfg.withDefaults()
	if cfg.TTL < time.Millisecond || cfg.MaxBodyBytes < 0 || cfg.lease < 3*time.Millisecond {
		panic(fmt.Sprintf("redisservice: IdempotencyMiddleware: TTL %v (want >= 1ms) or MaxBodyBytes %d < 0", cfg.TTL, cfg.MaxBodyBytes))
	}
	methods := make(map[string]bool, len(cfg.Methods))
	for _, m := range cfg.Methods {
		methods[strings.ToUpper(m)] = true
	}
	return func(next http.Handler) http.Handler {
		return &idemHandler{s: s, cfg: cfg, methods: methods, next: next,
			leaseArg: cfg.lease.Milliseconds(), ttlArg: cfg.TTL.Milliseconds()}
	}
}

// withDefaults returns a copy of c with unset fields filled in.
func (c IdempotencyConfig) withDefaults() IdempotencyConfig {
	if c.Header == "" {
		c.Header = "Idempotency-Key"
	}
	if c.TTL == 0 {
		c.TTL = 24 * time.Hour
	}
	if len(c.Methods) == 0 {
		c.Methods = []string{http.MethodPost, http.MethodPatch}
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = idemMaxBody
	}
	if c.lease == 0 {
		c.lease = idemLease
	}
	return c
}

// idemHandler is the handler IdempotencyMiddleware wraps around next.
type idemHandler struct {
	s       *Service
	cfg     IdempotencyConfig
	methods map[string]bool // read-only
	next    http.Handler

	// The scripts' arguments, boxed once: the lease and TTL in ms.
	leaseArg, ttlArg any
}

func (h *idemHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !h.methods[r.Method] {
		h.next.ServeHTTP(w, r)
		return
	}
	values := r.Header.Values(h.cfg.Header)
	if len(values) == 0 {
		if h.cfg.Required {
			writeProblem(w, http.StatusBadRequest, "this request needs an "+h.cfg.Header+" header")
			return
		}
		h.next.ServeHTTP(w, r)
		return
	}
	key, ok := parseIdemKey(values)
	if !ok {
		writeProblem(w, http.StatusBadRequest, "the "+h.cfg.Header+" header is not one string of at most 256 printable characters")
		return
	}
	if r.ContentLength > h.cfg.MaxBodyBytes {
		writeProblem(w, http.StatusRequestEntityTooLarge, "the request body is larger than this endpoint accepts with an "+h.cfg.Header)
		return
	}
	buf, prefix, err := readRequest(r, h.cfg.MaxBodyBytes)
	if err != nil {
		writeProblem(w, http.StatusBadRequest, "the request body could not be read")
		return
	}
	if int64(len(buf)-prefix) > h.cfg.MaxBodyBytes {
		writeProblem(w, http.StatusRequestEntityTooLarge, "the request body is larger than this endpoint accepts with an "+h.cfg.Header)
		return
	}
	// One allocation holds the request's state: its record, the body
	// the handler reads, the captured response and the lease's renewal.
	req := &idemRequest{}
	req.body.Reset(buf[prefix:])
	r.Body = &req.body

	scope := ""
	if h.cfg.Scope != nil {
		scope = h.cfg.Scope(r)
	}
	rec := &req.rec
	rec.init(h.s, key, idemPrefix+strconv.Itoa(len(scope))+":"+scope+":"+key, fingerprint(buf), ownerID())
	ctx := r.Context()
	code, stored, err := rec.claim(ctx, h.leaseArg)
	switch {
	case err != nil && h.cfg.FailOpen:
		h.s.tel.Idempotency(ctx, telemetry.IdemFailOpen)
		h.next.ServeHTTP(w, r)
	case err != nil:
		h.s.tel.Idempotency(ctx, telemetry.IdemUnavailable)
		w.Header().Set("Retry-After", "1")
		writeProblem(w, http.StatusServiceUnavailable, "the "+h.cfg.Header+" store is unavailable; try again later")
	case code == claimReplay:
		if replay(w, stored) {
			h.s.tel.Idempotency(ctx, telemetry.IdemReplayed)
			return
		}
		// A record that does not decode is no one's response: free it.
		rec.free(ctx, "D"+rec.fp+stored)
		h.s.tel.Idempotency(ctx, telemetry.IdemCorrupt)
		writeProblem(w, http.StatusConflict, "the stored response for this "+h.cfg.Header+" was unreadable and is dropped; retry")
	case code == claimConflict:
		h.s.tel.Idempotency(ctx, telemetry.IdemConflict)
		writeProblem(w, http.StatusConflict, "a request with this "+h.cfg.Header+" is still being processed")
	case code == claimMismatch:
		h.s.tel.Idempotency(ctx, telemetry.IdemMismatch)
		writeProblem(w, http.StatusUnprocessableEntity, "this "+h.cfg.Header+" was used with a different request")
	default:
		h.run(w, r, req)
	}
}

// run runs the handler for a claimed key, renewing the lease meanwhile,
// and stores its response, or frees the key.
func (h *idemHandler) run(w http.ResponseWriter, r *http.Request, req *idemRequest) {
	rec, cw := &req.rec, &req.cw
	cw.ResponseWriter = w
	req.lease.start(rec, h.cfg.lease, h.leaseArg)
	finished := false
	defer func() {
		req.lease.stop()
		// The request's ctx may have ended with its client; the record
		// must still be stored or freed.
		ctx := context.WithoutCancel(r.Context())
		if finished && cw.status() < 500 {
			if rec.store(ctx, cw.encode(), h.ttlArg) == nil {
				h.s.tel.Idempotency(ctx, telemetry.IdemStored)
			} else {
				// The client has its response, but a retry will not
				// replay it: it may run the handler again.
				h.s.tel.Idempotency(ctx, telemetry.IdemStoreFailed)
			}
			return
		}
		// A panic goes on after this, as net/http expects.
		rec.free(ctx, rec.running())
		h.s.tel.Idempotency(ctx, telemetry.IdemFreed)
	}()
	h.next.ServeHTTP(cw, r)
	finished = true
}

// idemRequest is the state of one request with a key, allocated once.
type idemRequest struct {
	rec   idemRecord
	body  bodyReader    // the request's body, as the handler reads it
	cw    captureWriter // the handler's ResponseWriter
	lease leaseKeeper
}

// bodyReader is a request body read into memory.
type bodyReader struct{ bytes.Reader }

// Close does nothing: the body is in memory.
func (*bodyReader) Close() error { return nil }

// parseIdemKey returns the key of the header's values: one value, a
// structured-field string or a bare token, of 1 to idemMaxKey printable
// ASCII characters.
func parseIdemKey(values []string) (string, bool) {
	if len(values) != 1 {
		return "", false
	}
	v := strings.TrimSpace(values[0])
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		var b strings.Builder
		for i := 1; i < len(v)-1; i++ {
			c := v[i]
			switch {
			case c == '\\' && i+2 < len(v) && (v[i+1] == '"' || v[i+1] == '\\'):
				i++
				c = v[i]
			case c == '\\' || c == '"':
				return "", false
			}
			b.WriteByte(c)
		}
		v = b.String()
	} else if strings.ContainsAny(v, "\"\\") {
		return "", false
	}
	if v == "" || len(v) > idemMaxKey {
		return "", false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] > 0x7e {
			return "", false
		}
	}
	return v, true
}

// readRequest reads r's body, after at most max bytes, into a buffer that
// begins with what fingerprint digests before it: r's method, a zero
// byte, its target (path and query) and a zero byte, prefix bytes in all.
// The body is buf[prefix:], max+1 bytes long when it is longer than max.
func readRequest(r *http.Request, max int64) (buf []byte, prefix int, err error) {
	uri := r.URL.RequestURI()
	prefix = len(r.Method) + 1 + len(uri) + 1
	size := int64(512)
	if r.ContentLength >= 0 && r.ContentLength <= max {
		size = r.ContentLength + 1 // room for the read that finds the end
	}
	buf = make([]byte, 0, int64(prefix)+size)
	buf = append(buf, r.Method...)
	buf = append(buf, 0)
	buf = append(buf, uri...)
	buf = append(buf, 0)
	if r.Body == nil {
		return buf, prefix, nil
	}
	limit := prefix + int(min(max, math.MaxInt-int64(prefix)-1)) + 1
	for len(buf) < limit {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Body.Read(buf[len(buf):min(cap(buf), limit)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, prefix, nil
		}
		if err != nil {
			return nil, 0, err
		}
	}
	return buf, prefix, nil
}

// fingerprint is the hex SHA-256 of what makes a request the same
// request, as readRequest lays it out: its method, target and body.
func fingerprint(buf []byte) string {
	sum := sha256.Sum256(buf)
	var fp [2 * sha256.Size]byte
	hex.Encode(fp[:], sum[:])
	return string(fp[:])
}

// problem is an RFC 9457 problem details object.
type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
}

// writeProblem answers with code and a problem+json body saying why.
func writeProblem(w http.ResponseWriter, code int, detail string) {
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(problem{Type: "about:blank", Title: http.StatusText(code), Status: code, Detail: detail})
}
