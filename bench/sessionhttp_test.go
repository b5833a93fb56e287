package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alexedwards/scs/redisstore"
	"github.com/alexedwards/scs/v2"
	redigo "github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vevurn/redisservice"
	"github.com/vevurn/redisservice/scsstore"
)

// httpCart is the application value each session carries beside its
// user's fields.
const httpCart = `{"items":[{"sku":"A-1","qty":2,"price":12.5},{"sku":"B-2","qty":1,"price":3}],"note":"café"}`

// httpSessions is one implementation of cookie sessions under test: a
// handler that serves GET / (read the cart, change nothing) and
// POST /login?u= (log in, put the cart), and the cookie's name.
type httpSessions struct {
	handler    http.Handler
	cookie     string
	roundTrips func() int64 // client round trips so far
}

// BenchmarkSessionHTTP measures one logged-in request that reads a value
// and changes nothing, through each implementation's LoadAndSave (called
// in process: no HTTP transport), at 1 and 64 callers, each caller with
// a session of its own. Besides time it reports the client's round trips
// per request and the commands the server ran per request (INFO
// commandstats, commands run by scripts included; connection set-up and
// the INFO calls left out). manager-touch touches the session on every
// request (TouchInterval 1ms): the manager's worst case for an unchanged
// request. manager-tier is manager over a Service with the local tier
// (Options.LocalCacheEntries): within TouchInterval the session comes
// from the tier, no round trip. scs commits every request when
// IdleTimeout is set.
func BenchmarkSessionHTTP(b *testing.B) {
	impls := []struct {
		name string
		make func(b *testing.B) httpSessions
	}{
		{"manager", func(b *testing.B) httpSessions { return managerSessions(b, time.Minute, 0) }},
		{"manager-touch", func(b *testing.B) httpSessions { return managerSessions(b, time.Millisecond, 0) }},
		{"manager-tier", func(b *testing.B) httpSessions { return managerSessions(b, time.Minute, 10000) }},
		{"scs+scsstore", scsstoreSessions},
		{"scs+redisstore", redisstoreSessions},
	}
	for _, impl := range impls {
		for _, callers := range []int{1, 64} {
			b.Run(fmt.Sprintf("impl=%s/callers=%d", impl.name, callers), func(b *testing.B) {
				hs := impl.make(b)
				reqs := make([]*http.Request, callers)
				for i := range reqs {
					reqs[i] = loggedIn(b, hs, fmt.Sprintf("bench-http-u%d", i))
				}
				// Warm up: scripts loaded, connections dialled.
				var warm atomic.Int64
				runRequests(b, callers, func() *http.Request { return reqs[int(warm.Add(1)-1)%len(reqs)] }, hs.handler, 4*callers)
				info := newCommandStats(b)
				rt0 := hs.roundTrips()
				info.start()
				var next atomic.Int64
				runRequests(b, callers, func() *http.Request { return reqs[int(next.Add(1)-1)%len(reqs)] }, hs.handler, 0)
				b.StopTimer()
				b.ReportMetric(info.perOp(b.N), "cmds/op")
				b.ReportMetric(float64(hs.roundTrips()-rt0)/float64(b.N), "roundtrips/op")
			})
		}
	}
}

// runRequests serves b.N requests (n, untimed, when n > 0) with h over
// callers goroutines, each taking its request from next once.
func runRequests(b *testing.B, callers int, next func() *http.Request, h http.Handler, n int) {
	b.Helper()
	serve := func(r *http.Request) error {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != http.StatusOK || w.Body.Len() == 0 {
			return fmt.Errorf("status %d, body %q", w.Code, w.Body.String())
		}
		return nil
	}
	if n > 0 {
		var wg sync.WaitGroup
		for range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := next()
				for range n / callers {
					if err := serve(r); !assert.NoError(b, err) {
						return
					}
				}
			}()
		}
		wg.Wait()
		return
	}
	b.ReportAllocs()
	if callers <= 1 {
		r := next()
		b.ResetTimer()
		for range b.N {
			if err := serve(r); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	procs := runtime.GOMAXPROCS(0)
	b.SetParallelism((callers + procs - 1) / procs)
	var failed atomic.Bool
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		r := next()
		for pb.Next() {
			if err := serve(r); err != nil {
				if failed.CompareAndSwap(false, true) {
					b.Error(err)
				}
				return
			}
		}
	})
}

// loggedIn logs user in through hs and returns a GET / carrying the
// session cookie.
func loggedIn(b *testing.B, hs httpSessions, user string) *http.Request {
	b.Helper()
	w := httptest.NewRecorder()
	hs.handler.ServeHTTP(w, httptest.NewRequest("POST", "/login?u="+user, nil))
	var cookie *http.Cookie
	for _, c := range w.Result().Cookies() {
		if c.Name == hs.cookie {
			cookie = c
		}
	}
	require.Equal(b, http.StatusOK, w.Code, "log-in: status")
	require.NotNil(b, cookie, "log-in: no %s cookie", hs.cookie)
	r := httptest.NewRequest("GET", "/", nil)
	r.AddCookie(&http.Cookie{Name: cookie.Name, Value: cookie.Value})
	return r
}

// managerSessions is the SessionManager, touching sessions at most every
// touchEvery, over a Service with a local tier of tierEntries (0: none).
func managerSessions(b *testing.B, touchEvery time.Duration, tierEntries int) httpSessions {
	rt := &roundTrips{}
	svc := newService(b, redisservice.Options{KeyPrefix: "bench:http:", LocalCacheEntries: tierEntries})
	if tierEntries > 0 {
		require.Eventually(b, svc.LocalCacheActive, 10*time.Second, time.Millisecond, "the local tier in use")
	}
	svc.Client().AddHook(rt)
	m, err := svc.SessionManager(redisservice.SessionConfig{IdleTimeout: 30 * time.Minute, Lifetime: 24 * time.Hour, TouchInterval: touchEvery})
	require.NoError(b, err)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		u := r.FormValue("u")
		if err := m.Login(r.Context(), redisservice.SessionData{UserID: u, Email: u + "@example.com", Role: "cashier"}); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		if err := m.Put(r.Context(), "cart", json.RawMessage(httpCart)); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
		cart, ok, err := redisservice.SessionValue[json.RawMessage](r.Context(), m, "cart")
		if !ok || err != nil {
			http.Error(w, "no cart", http.StatusUnauthorized)
			return
		}
		_, _ = w.Write(strconv.AppendInt(nil, int64(len(cart)), 10))
	})
	b.Cleanup(func() { cleanPrefix(b, svc, "bench:http:") })
	return httpSessions{handler: m.LoadAndSave(mux), cookie: "session", roundTrips: rt.n.Load}
}

// scsSessions is scs with store, configured as the manager is.
func scsSessions(store scs.Store) (*scs.SessionManager, http.Handler) {
	sm := scs.New()
	sm.Store = store
	sm.IdleTimeout = 30 * time.Minute
	sm.Lifetime = 24 * time.Hour
	mux := http.NewServeMux()
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		if err := sm.RenewToken(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		u := r.FormValue("u")
		sm.Put(r.Context(), "userId", u)
		sm.Put(r.Context(), "email", u+"@example.com")
		sm.Put(r.Context(), "role", "cashier")
		sm.Put(r.Context(), "cart", []byte(httpCart))
	})
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
		cart := sm.GetBytes(r.Context(), "cart")
		if len(cart) == 0 {
			http.Error(w, "no cart", http.StatusUnauthorized)
			return
		}
		_, _ = w.Write(strconv.AppendInt(nil, int64(len(cart)), 10))
	})
	return sm, sm.LoadAndSave(mux)
}

func scsstoreSessions(b *testing.B) httpSessions {
	rt := &roundTrips{}
	svc := newService(b, redisservice.Options{KeyPrefix: "bench:scs:"})
	svc.Client().AddHook(rt)
	sm, h := scsSessions(scsstore.New(svc))
	b.Cleanup(func() { cleanPrefix(b, svc, "bench:scs:") })
	return httpSessions{handler: h, cookie: sm.Cookie.Name, roundTrips: rt.n.Load}
}

func redisstoreSessions(b *testing.B) httpSessions {
	url := benchURL(b)
	var n atomic.Int64
	pool := &redigo.Pool{
		MaxIdle: 128,
		Dial: func() (redigo.Conn, error) {
			c, err := redigo.DialURL(url)
			return countingConn{Conn: c, n: &n}, err
		},
	}
	b.Cleanup(func() { _ = pool.Close() })
	sm, h := scsSessions(redisstore.NewWithPrefix(pool, "bench:redisstore:"))
	b.Cleanup(func() {
		svc := newService(b, redisservice.Options{})
		cleanPrefix(b, svc, "bench:redisstore:")
	})
	return httpSessions{handler: h, cookie: sm.Cookie.Name, roundTrips: n.Load}
}

// countingConn counts round trips on a redigo connection: each Do of a
// command flushes what Send queued and waits for the replies. (The pool
// calls Do("") when a connection goes back: nothing is sent then.)
type countingConn struct {
	redigo.Conn
	n *atomic.Int64
}

func (c countingConn) Do(cmd string, args ...any) (any, error) {
	if cmd != "" {
		c.n.Add(1)
	}
	return c.Conn.Do(cmd, args...)
}

// cleanPrefix deletes the benchmark's keys.
func cleanPrefix(b *testing.B, svc *redisservice.Service, prefix string) {
	ctx := context.Background()
	iter := svc.Client().Scan(ctx, 0, prefix+"*", 1000).Iterator()
	for iter.Next(ctx) {
		svc.Client().Del(ctx, iter.Val())
	}
	if err := iter.Err(); err != nil {
		b.Logf("cleanup of %s*: %v", prefix, err)
	}
}

// commandStats counts the commands the server runs between start and
// perOp, from INFO commandstats.
type commandStats struct {
	b      *testing.B
	c      *redisservice.Service
	before int64
}

func newCommandStats(b *testing.B) *commandStats {
	return &commandStats{b: b, c: newService(b, redisservice.Options{})}
}

func (s *commandStats) start() { s.before = s.calls() }

func (s *commandStats) perOp(n int) float64 { return float64(s.calls()-s.before) / float64(n) }

// calls sums the calls of every command in INFO commandstats but INFO
// itself and a connection's set-up (HELLO, CLIENT, AUTH, SELECT, PING).
func (s *commandStats) calls() int64 {
	info, err := s.c.Info(context.Background(), "commandstats")
	require.NoError(s.b, err)
	var sum int64
	for k, v := range info {
		name, ok := strings.CutPrefix(k, "cmdstat_")
		if !ok {
			continue
		}
		switch strings.SplitN(name, "|", 2)[0] {
		case "info", "hello", "client", "auth", "select", "ping":
			continue
		}
		for f := range strings.SplitSeq(v, ",") {
			if c, ok := strings.CutPrefix(f, "calls="); ok {
				n, err := strconv.ParseInt(c, 10, 64)
				require.NoError(s.b, err)
				sum += n
			}
		}
	}
	return sum
}
