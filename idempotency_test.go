package redisservice

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// charge is a payment handler that counts its runs. Its response has a
// body that is not text, a header to keep and a cookie not to keep.
type charge struct {
	runs   atomic.Int64
	status atomic.Int64 // the status to answer; 0: 201
}

func (c *charge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := c.runs.Add(1)
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("X-Charge-Id", fmt.Sprint("ch_", n))
	w.Header().Set("Content-Type", "application/octet-stream")
	http.SetCookie(w, &http.Cookie{Name: "seen", Value: "1"})
	status := int(c.status.Load())
	if status == 0 {
		status = http.StatusCreated
	}
	w.WriteHeader(status)
	fmt.Fprintf(w, "charged %s #%d\x00\xff\r\n", body, n)
}

// send makes one request through h and returns its response.
func send(h http.Handler, method, target, key, body string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, strings.NewReader(body))
	if key != "" {
		r.Header.Set("Idempotency-Key", key)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// requireProblem checks that w is a problem+json answer with code.
func requireProblem(t *testing.T, w *httptest.ResponseRecorder, code int, what string) {
	t.Helper()
	require.Equal(t, code, w.Code, "%s: status; body %s", what, w.Body)
	require.Equal(t, "application/problem+json", w.Header().Get("Content-Type"), what)
	var p problem
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &p), what)
	assert.Equal(t, code, p.Status, what)
	assert.NotEmpty(t, p.Detail, what)
}

// TestIdempotencyReplayAcrossServices: a retry sent to another instance
// gets the first response (status, headers but Set-Cookie, body) byte
// for byte without running the handler; the key as a bare token is the
// same key.
func TestIdempotencyReplayAcrossServices(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		c := &charge{}
		a := b.service(t, Options{}).IdempotencyMiddleware(IdempotencyConfig{})(c)
		other := b.service(t, Options{}).IdempotencyMiddleware(IdempotencyConfig{})(c)

		first := send(a, http.MethodPost, "/pay?till=3", `"k-1"`, `{"amount":500}`)
		require.Equal(t, http.StatusCreated, first.Code)
		require.NotEmpty(t, first.Header().Get("Set-Cookie"), "the first response's cookie")
		for i, h := range []http.Handler{other, a, other} {
			key := `"k-1"`
			if i == 2 {
				key = "k-1" // a bare token
			}
			again := send(h, http.MethodPost, "/pay?till=3", key, `{"amount":500}`)
			require.Equal(t, first.Code, again.Code, "retry %d", i)
			require.Equal(t, first.Body.Bytes(), again.Body.Bytes(), "retry %d: body", i)
			assert.Equal(t, "ch_1", again.Header().Get("X-Charge-Id"), "retry %d", i)
			assert.Equal(t, "application/octet-stream", again.Header().Get("Content-Type"), "retry %d", i)
			assert.Empty(t, again.Header().Get("Set-Cookie"), "retry %d: Set-Cookie replayed", i)
			assert.Equal(t, "true", again.Header().Get("Idempotent-Replayed"), "retry %d", i)
		}
		assert.Equal(t, int64(1), c.runs.Load(), "handler runs")

		// Another key, and requests the middleware does not cover, run.
		require.Equal(t, http.StatusCreated, send(other, http.MethodPost, "/pay?till=3", "k-2", `{"amount":500}`).Code)
		send(a, http.MethodPut, "/pay", "k-1", `{"amount":500}`)
		send(a, http.MethodPost, "/pay", "", `{"amount":500}`)
		assert.Equal(t, int64(4), c.runs.Load(), "handler runs")
	})
}

// TestIdempotencyMismatch: the same key with another method, target or
// body is answered 422 without running the handler.
func TestIdempotencyMismatch(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		c := &charge{}
		h := b.service(t, Options{}).IdempotencyMiddleware(IdempotencyConfig{})(c)
		require.Equal(t, http.StatusCreated, send(h, http.MethodPost, "/pay", "k", "500").Code)
		requireProblem(t, send(h, http.MethodPost, "/pay", "k", "501"), http.StatusUnprocessableEntity, "another body")
		requireProblem(t, send(h, http.MethodPost, "/refund", "k", "500"), http.StatusUnprocessableEntity, "another path")
		requireProblem(t, send(h, http.MethodPost, "/pay?x=1", "k", "500"), http.StatusUnprocessableEntity, "another query")
		requireProblem(t, send(h, http.MethodPatch, "/pay", "k", "500"), http.StatusUnprocessableEntity, "another method")
		assert.Equal(t, int64(1), c.runs.Load(), "handler runs")
	})
}

// holding is a handler that signals when it starts and returns when
// released.
type holding struct {
	started chan struct{}
	release chan struct{}
	once    sync.Once
	runs    atomic.Int64
}

// newHolding returns a holding handler, released at cleanup at the
// latest.
func newHolding(t testing.TB) *holding {
	h := &holding{started: make(chan struct{}, 8), release: make(chan struct{})}
	t.Cleanup(h.done)
	return h
}

// done releases the handler's runs.
func (h *holding) done() { h.once.Do(func() { close(h.release) }) }

func (h *holding) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	n := h.runs.Add(1)
	h.started <- struct{}{}
	<-h.release
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, "run %d", n)
}

// TestIdempotencyConflict: a retry while the first request runs is
// answered 409; once it is done, the retry gets its response.
func TestIdempotencyConflict(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		hd := newHolding(t)
		h := b.service(t, Options{}).IdempotencyMiddleware(IdempotencyConfig{})(hd)
		done := make(chan *httptest.ResponseRecorder, 1)
		go func() { done <- send(h, http.MethodPost, "/pay", "k", "500") }()
		<-hd.started
		requireProblem(t, send(h, http.MethodPost, "/pay", "k", "500"), http.StatusConflict, "retry in flight")
		requireProblem(t, send(h, http.MethodPost, "/pay", "k", "501"), http.StatusUnprocessableEntity, "another request in flight")
		hd.done()
		first := <-done
		require.Equal(t, http.StatusCreated, first.Code)
		again := send(h, http.MethodPost, "/pay", "k", "500")
		require.Equal(t, http.StatusCreated, again.Code)
		assert.Equal(t, "run 1", again.Body.String())
		assert.Equal(t, int64(1), hd.runs.Load())
	})
}

// TestIdempotencyBadRequests: a missing key with Required, a malformed
// key, and a body over MaxBodyBytes are refused without running the
// handler.
func TestIdempotencyBadRequests(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		c := &charge{}
		s := b.service(t, Options{})
		h := s.IdempotencyMiddleware(IdempotencyConfig{Required: true, MaxBodyBytes: 8})(c)
		requireProblem(t, send(h, http.MethodPost, "/pay", "", "5"), http.StatusBadRequest, "no key with Required")
		for _, k := range []string{`"open`, `"a"b"`, `a b"`, `""`, "é", strings.Repeat("k", 257)} {
			requireProblem(t, send(h, http.MethodPost, "/pay", k, "5"), http.StatusBadRequest, "key "+k)
		}
		r := httptest.NewRequest(http.MethodPost, "/pay", strings.NewReader("5"))
		r.Header.Add("Idempotency-Key", "a")
		r.Header.Add("Idempotency-Key", "b")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		requireProblem(t, w, http.StatusBadRequest, "two keys")
		requireProblem(t, send(h, http.MethodPost, "/pay", "k", "123456789"), http.StatusRequestEntityTooLarge, "body over MaxBodyBytes")
		r = httptest.NewRequest(http.MethodPost, "/pay", io.NopCloser(strings.NewReader("123456789")))
		r.ContentLength = -1
		r.Header.Set("Idempotency-Key", "k")
		w = httptest.NewRecorder()
		h.ServeHTTP(w, r)
		requireProblem(t, w, http.StatusRequestEntityTooLarge, "body of unknown length over MaxBodyBytes")
		assert.Zero(t, c.runs.Load(), "handler runs")
		require.Equal(t, http.StatusCreated, send(h, http.MethodPost, "/pay", `"a \"quoted\" key"`, "12345678").Code, "a body of MaxBodyBytes")
	})
}

// TestIdempotencyFreesFailures: a 5xx response, a panic and a handler
// that never finished leave the key free, so a retry runs again.
func TestIdempotencyFreesFailures(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		c := &charge{}
		h := b.service(t, Options{}).IdempotencyMiddleware(IdempotencyConfig{})(c)
		c.status.Store(http.StatusBadGateway)
		require.Equal(t, http.StatusBadGateway, send(h, http.MethodPost, "/pay", "k", "5").Code)
		c.status.Store(0)
		require.Equal(t, http.StatusCreated, send(h, http.MethodPost, "/pay", "k", "5").Code, "retry after a 5xx")
		assert.Equal(t, int64(2), c.runs.Load())

		panicky := b.service(t, Options{}).IdempotencyMiddleware(IdempotencyConfig{})(
			http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) }))
		func() {
			defer func() { assert.Equal(t, http.ErrAbortHandler, recover(), "the handler's panic goes on") }()
			send(panicky, http.MethodPost, "/pay", "p", "5")
		}()
		require.Equal(t, http.StatusCreated, send(h, http.MethodPost, "/pay", "p", "5").Code, "retry after a panic")
		assert.Equal(t, int64(3), c.runs.Load())

		// A 4xx is an answer: kept and replayed.
		c.status.Store(http.StatusPaymentRequired)
		require.Equal(t, http.StatusPaymentRequired, send(h, http.MethodPost, "/pay", "d", "5").Code)
		c.status.Store(0)
		require.Equal(t, http.StatusPaymentRequired, send(h, http.MethodPost, "/pay", "d", "5").Code)
		assert.Equal(t, int64(4), c.runs.Load())
	})
}

// TestIdempotencyLeaseOfAKilledInstance: an instance that stops renewing
// its lease (here: its Service is closed while its handler runs) holds
// the key only until the lease ends; then a retry runs elsewhere, and the
// dead instance's late response does not replace that one.
func TestIdempotencyLeaseOfAKilledInstance(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		lease := idemLease
		if b.real() {
			lease = 300 * time.Millisecond
		}
		cfg := IdempotencyConfig{lease: lease}
		dying := b.service(t, Options{})
		hd := newHolding(t)
		dead := dying.IdempotencyMiddleware(cfg)(hd)
		c := &charge{}
		alive := b.service(t, Options{}).IdempotencyMiddleware(cfg)(c)

		done := make(chan *httptest.ResponseRecorder, 1)
		go func() { done <- send(dead, http.MethodPost, "/pay", "k", "5") }()
		<-hd.started
		requireProblem(t, send(alive, http.MethodPost, "/pay", "k", "5"), http.StatusConflict, "retry while the first runs")
		require.NoError(t, dying.Close())

		b.pass(lease)
		var w *httptest.ResponseRecorder
		b.waitFor(t, "the dead instance's lease ended", func() bool {
			w = send(alive, http.MethodPost, "/pay", "k", "5")
			return w.Code != http.StatusConflict
		})
		require.Equal(t, http.StatusCreated, w.Code, "retry after the lease ended")
		hd.done()
		<-done
		again := send(alive, http.MethodPost, "/pay", "k", "5")
		require.Equal(t, w.Body.String(), again.Body.String(), "the live instance's response, replayed")
		assert.Equal(t, int64(1), c.runs.Load())
	})
}

// TestIdempotencyLeaseRenewed: a handler that runs longer than the lease
// keeps its key: retries meanwhile are answered 409.
func TestIdempotencyLeaseRenewed(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		lease := time.Second
		if b.real() {
			lease = 2 * time.Second
		}
		s := b.service(t, Options{})
		hd := newHolding(t)
		h := s.IdempotencyMiddleware(IdempotencyConfig{lease: lease})(hd)
		done := make(chan *httptest.ResponseRecorder, 1)
		go func() { done <- send(h, http.MethodPost, "/pay", "k", "5") }()
		<-hd.started
		raw := b.raw("idem:0::k")
		ctx := ctxT(t)
		// Three renewals seen: the mark's TTL went back up each time.
		for i := range 3 {
			b.pass(lease / 2)
			low := b.client.PTTL(ctx, raw).Val()
			require.Positive(t, low, "the mark, %d", i)
			b.waitFor(t, "a renewal", func() bool {
				if !b.real() {
					// miniredis's TTLs stand still between passes.
					deadline := time.Now().Add(waitDeadline)
					for time.Now().Before(deadline) && b.client.PTTL(ctx, raw).Val() <= low {
						time.Sleep(5 * time.Millisecond)
					}
				}
				return b.client.PTTL(ctx, raw).Val() > low
			})
		}
		requireProblem(t, send(h, http.MethodPost, "/pay", "k", "5"), http.StatusConflict, "retry after more than the lease")
		hd.done()
		require.Equal(t, http.StatusCreated, (<-done).Code)
	})
}

// TestIdempotencyRedisDown: without Redis a keyed request is answered
// 503 with Retry-After and the handler does not run; with FailOpen it
// runs. A request without a key runs either way.
func TestIdempotencyRedisDown(t *testing.T) {
	t.Parallel()
	s := dialled(t, "redis://"+closedPort(t), Options{MaxRetries: -1})
	c := &charge{}
	h := s.IdempotencyMiddleware(IdempotencyConfig{})(c)
	w := send(h, http.MethodPost, "/pay", "k", "5")
	requireProblem(t, w, http.StatusServiceUnavailable, "Redis down")
	assert.Equal(t, "1", w.Header().Get("Retry-After"))
	assert.Zero(t, c.runs.Load(), "handler runs")

	open := s.IdempotencyMiddleware(IdempotencyConfig{FailOpen: true})(c)
	require.Equal(t, http.StatusCreated, send(open, http.MethodPost, "/pay", "k", "5").Code, "FailOpen")
	require.Equal(t, http.StatusCreated, send(h, http.MethodPost, "/pay", "", "5").Code, "no key")
	assert.Equal(t, int64(2), c.runs.Load(), "handler runs")
}

// TestIdempotencyScope: Scope keeps one client's key from replaying
// another's response; each client's keys are its own.
func TestIdempotencyScope(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		c := &charge{}
		h := b.service(t, Options{}).IdempotencyMiddleware(IdempotencyConfig{
			Scope: func(r *http.Request) string { return r.Header.Get("X-User") },
		})(c)
		as := func(user, key string) *httptest.ResponseRecorder {
			r := httptest.NewRequest(http.MethodPost, "/pay", strings.NewReader("5"))
			r.Header.Set("Idempotency-Key", key)
			r.Header.Set("X-User", user)
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			return w
		}
		alice := as("alice", "k")
		bob := as("bob", "k")
		assert.NotEqual(t, alice.Body.String(), bob.Body.String(), "bob got alice's response")
		// A scope and key that would meet if joined with a separator alone
		// are two keys.
		require.Equal(t, http.StatusCreated, as("alice:k", "x").Code)
		require.Equal(t, http.StatusCreated, as("alice", "k:x").Code)
		assert.Equal(t, int64(4), c.runs.Load(), "handler runs")
		assert.Equal(t, alice.Body.String(), as("alice", "k").Body.String())
	})
}

// TestIdempotencyStoredHead: the head of a stored response is written
// byte for byte as encoding/json writes it (sorted keys, escaping, nil and
// empty values, the headers left out), so records stay readable by every
// version of the middleware sharing the Redis.
func TestIdempotencyStoredHead(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		status int
		header http.Header
	}{
		{"none", 201, nil},
		{"empty", 200, http.Header{}},
		{"only left out", 200, http.Header{"Set-Cookie": {"a=b"}, "Connection": {"close"}}},
		{"plain", 201, http.Header{"Content-Type": {"application/json"}, "X-B": {"1", "2"}, "Location": {"/p/1"}}},
		{"nil and empty values", 200, http.Header{"Date": nil, "X-Empty": {}, "X-Blank": {""}}},
		{"escaped", 422, http.Header{"X-Html": {"<a href=\"x\">&</a>"}, "X-Ctl": {"a\tb\x00\x7f"}, "X-Utf8": {"é\u2028", "\xff"}, "x-lower\\": {"\\"}}},
		{"many", 200, func() http.Header {
			h := http.Header{}
			for i := range 40 {
				h.Set(fmt.Sprintf("X-H%02d", 40-i), strconv.Itoa(i))
			}
			h.Set("Transfer-Encoding", "chunked")
			return h
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.header.Clone()
			for k := range want {
				if notKept(k) {
					delete(want, k)
				}
			}
			head, err := json.Marshal(storedResponse{Status: tt.status, Header: want})
			require.NoError(t, err)
			var b strings.Builder
			writeHead(&b, tt.status, tt.header)
			assert.Equal(t, string(head)+"\n", b.String(), "writeHead(%d, %v)", tt.status, tt.header)

			// And it is replayed as encoding/json reads it.
			w := httptest.NewRecorder()
			require.True(t, replay(w, b.String()+"body"), "replay(%q)", b.String())
			var sr storedResponse
			require.NoError(t, json.Unmarshal(head, &sr))
			if sr.Header == nil {
				sr.Header = http.Header{}
			}
			sr.Header.Set(idemReplayHeader, "true")
			assert.Equal(t, sr.Header, w.Header(), "replayed headers")
			assert.Equal(t, tt.status, w.Code, "replayed status")
			assert.Equal(t, "body", w.Body.String(), "replayed body")
		})
	}
}

// TestIdempotencyReplayHeadForms: a stored head in another form than the
// one written (spaces, escapes, field order) is still read, through
// encoding/json, and one that is not a head is refused.
func TestIdempotencyReplayHeadForms(t *testing.T) {
	t.Parallel()
	tests := []struct {
		head   string
		ok     bool
		status int
		header http.Header
	}{
		{`{"s":201,"h":{"A":["x","y"],"B":null}}`, true, 201, http.Header{"A": {"x", "y"}, "B": nil}},
		{`{ "h": {"A": ["x"]}, "s": 202 }`, true, 202, http.Header{"A": {"x"}}},
		{`{"s":200,"h":{"A":["\u003cb\u003e"]}}`, true, 200, http.Header{"A": {"<b>"}}},
		{`{"s":200,"h":{"A":["x"],"A":["y"]}}`, true, 200, http.Header{"A": {"y"}}},
		{`{"s":200,"h":{}}`, true, 200, http.Header{}},
		{`{"s":200,"h":{"A":["x"]}`, false, 0, nil},
		{`{"s":200}x`, false, 0, nil},
		{`{"s":099}`, false, 0, nil},
		{`{"s":1000}`, false, 0, nil},
		{`{"s":"200"}`, false, 0, nil},
		{`{"s":200,"h":{"A":"x"}}`, false, 0, nil},
		{`{"s":200,"h":{"A":["x\ty"]}}`, true, 200, http.Header{"A": {"x\ty"}}},
	}
	for _, tt := range tests {
		w := httptest.NewRecorder()
		ok := replay(w, tt.head+"\nbody")
		require.Equal(t, tt.ok, ok, "replay(%q)", tt.head)
		if !ok {
			assert.Empty(t, w.Header(), "replay(%q) headers", tt.head)
			continue
		}
		tt.header.Set(idemReplayHeader, "true")
		assert.Equal(t, tt.header, w.Header(), "replay(%q) headers", tt.head)
		assert.Equal(t, tt.status, w.Code, "replay(%q) status", tt.head)
	}
}

// TestIdempotencyLeaseLost: a handler whose lease is lost (another
// request's mark written over it) still answers; its response is not
// stored over the other's mark, and Redis, which answered, is not taken
// for down: the next request is answered from Redis (422 against the
// other's mark), not 503.
func TestIdempotencyLeaseLost(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		raw := b.raw("idem:0::k")
		other := "R" + strings.Repeat("0", 64) + "another"
		var setErr error
		h := s.IdempotencyMiddleware(IdempotencyConfig{})(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			setErr = b.client.Set(ctx, raw, other, time.Minute).Err()
			w.WriteHeader(http.StatusCreated)
		}))
		require.Equal(t, http.StatusCreated, send(h, http.MethodPost, "/pay", "k", "5").Code, "lease lost")
		require.NoError(t, setErr)
		assert.Equal(t, other, b.client.Get(ctx, raw).Val(), "the other's mark")
		assert.Equal(t, http.StatusUnprocessableEntity, send(h, http.MethodPost, "/pay", "k", "5").Code, "after a lost lease")
	})
}
