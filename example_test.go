package redisservice_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/vevurn/redisservice"
)

// newExampleService returns a Service over a fresh miniredis, standing in
// for a real Redis in these examples.
func newExampleService() (*redisservice.Service, func()) {
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	svc, err := redisservice.New(redisservice.Options{URL: "redis://" + mr.Addr(), KeyPrefix: "pos:"})
	if err != nil {
		panic(err)
	}
	return svc, func() { svc.Close(); mr.Close() }
}

// newExampleServer is newExampleService for examples that move the
// server's clock or stop it. Its Service logs nothing.
func newExampleServer() (*redisservice.Service, *miniredis.Miniredis, func()) {
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	svc, err := redisservice.New(redisservice.Options{
		URL:       "redis://" + mr.Addr(),
		KeyPrefix: "pos:",
		Logger:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		panic(err)
	}
	return svc, mr, func() { svc.Close(); mr.Close() }
}

func Example() {
	svc, cleanup := newExampleService()
	defer cleanup()
	ctx := context.Background()

	if _, err := svc.Set(ctx, "greeting", "hello", redisservice.WithTTL(time.Minute)); err != nil {
		fmt.Println(err)
	}
	v, found, err := svc.Get(ctx, "greeting")
	fmt.Println(v, found, err)
	// Output: hello true <nil>
}

func ExampleService_Set() {
	svc, cleanup := newExampleService()
	defer cleanup()
	ctx := context.Background()

	// NX: only the first writer wins.
	first, _ := svc.Set(ctx, "order:17:lock", "register-1", redisservice.NX(), redisservice.WithTTL(250*time.Millisecond))
	second, _ := svc.Set(ctx, "order:17:lock", "register-2", redisservice.NX(), redisservice.WithTTL(250*time.Millisecond))
	ttl, _ := svc.TTL(ctx, "order:17:lock")
	fmt.Println(first, second, ttl > 200*time.Millisecond && ttl <= 250*time.Millisecond)
	// Output: true false true
}

func ExampleService_MGet() {
	svc, cleanup := newExampleService()
	defer cleanup()
	ctx := context.Background()

	_ = svc.MSet(ctx, map[string]any{"price:A-1": 250, "price:B-2": 400}, redisservice.WithTTL(time.Hour))
	prices, err := svc.MGet(ctx, "price:A-1", "price:B-2", "price:missing")
	fmt.Println(prices, err)
	// Output: map[price:A-1:250 price:B-2:400] <nil>
}

func ExampleService_GetJSON() {
	svc, cleanup := newExampleService()
	defer cleanup()
	ctx := context.Background()

	type product struct {
		SKU   string `json:"sku"`
		Price int    `json:"priceCents"`
	}
	_, _ = svc.SetJSON(ctx, "product:A-1", product{SKU: "A-1", Price: 250})

	var p product
	found, err := svc.GetJSON(ctx, "product:A-1", &p)
	fmt.Printf("%+v %v %v\n", p, found, err)
	// Output: {SKU:A-1 Price:250} true <nil>
}

func ExampleService_HGetAll() {
	svc, cleanup := newExampleService()
	defer cleanup()
	ctx := context.Background()

	_ = svc.HSet(ctx, "register:1", "cashier", "ada")
	_ = svc.HSet(ctx, "register:1", "float", 20000)
	fields, err := svc.HGetAll(ctx, "register:1")
	fmt.Println(fields, err)
	// Output: map[cashier:ada float:20000] <nil>
}

func ExampleService_CheckRateLimit() {
	svc, cleanup := newExampleService()
	defer cleanup()
	ctx := context.Background()

	// Three logins per register per minute; the fourth is refused.
	for i := 1; i <= 4; i++ {
		r, err := svc.CheckRateLimit(ctx, "login:register-1", time.Minute, 3)
		if err != nil {
			fmt.Println(err) // Redis down: r.Allowed is true unless Options.RateLimitFailClosed
		}
		fmt.Printf("attempt %d: allowed=%v remaining=%d retry in window=%v\n",
			i, r.Allowed, r.Remaining, r.RetryAfter > 0 && r.RetryAfter <= time.Minute)
	}
	// Output:
	// attempt 1: allowed=true remaining=2 retry in window=false
	// attempt 2: allowed=true remaining=1 retry in window=false
	// attempt 3: allowed=true remaining=0 retry in window=false
	// attempt 4: allowed=false remaining=0 retry in window=true
}

func ExampleService_AllowN() {
	svc, cleanup := newExampleService()
	defer cleanup()
	ctx := context.Background()

	// 10 exports a minute in bursts of up to 3, and 100 an hour: both
	// decided together, in one round trip.
	limits := []redisservice.Limit{{Rate: 10, Period: time.Minute, Burst: 3}, redisservice.PerHour(100)}
	for _, cost := range []int{1, 2, 1, 0} {
		r, err := svc.AllowN(ctx, "export:ada", cost, limits...)
		if err != nil {
			fmt.Println(err) // Redis down: r.Allowed is true unless Options.RateLimitFailClosed
		}
		fmt.Printf("cost %d: allowed=%v remaining=%d retry-after=%v\n",
			cost, r.Allowed, r.Remaining, r.RetryAfter.Round(time.Second))
	}
	// Output:
	// cost 1: allowed=true remaining=2 retry-after=0s
	// cost 2: allowed=true remaining=0 retry-after=0s
	// cost 1: allowed=false remaining=0 retry-after=6s
	// cost 0: allowed=true remaining=0 retry-after=0s
}

func ExampleService_AllowAll() {
	svc, cleanup := newExampleService()
	defer cleanup()
	ctx := context.Background()

	// Logins limited per client IP and per user, together: an attempt
	// denied by either limit takes nothing from the other.
	ips, _ := redisservice.NewClientIPResolver(nil, "", 0) // as the middleware's
	req := httptest.NewRequest(http.MethodPost, "/login", nil)
	req.RemoteAddr = "203.0.113.7:56722"
	perIP := redisservice.KeyLimit{Key: "login-ip:" + ips.Key(req), Limit: redisservice.PerHour(20)}
	for _, user := range []string{"ada", "ada", "ada", "bob"} {
		perUser := redisservice.KeyLimit{Key: "login-user:" + user, Limit: redisservice.PerMinute(2)}
		r, err := svc.AllowAll(ctx, 1, perIP, perUser)
		if err != nil {
			fmt.Println(err) // Redis down: r.Allowed is true unless Options.RateLimitFailClosed
		}
		fmt.Printf("%s: allowed=%v remaining=%d\n", user, r.Allowed, r.Remaining)
	}
	r, _ := svc.AllowN(ctx, perIP.Key, 0, perIP.Limit)
	fmt.Println("logins left for", ips.ClientIP(req), r.Remaining)
	// Output:
	// ada: allowed=true remaining=1
	// ada: allowed=true remaining=0
	// ada: allowed=false remaining=0
	// bob: allowed=true remaining=1
	// logins left for 203.0.113.7 17
}

func ExampleService_RateLimitMiddleware() {
	svc, cleanup := newExampleService()
	defer cleanup()

	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "products") })
	limit := svc.RateLimitMiddleware(redisservice.RateLimitConfig{
		Limit:  2,
		Window: time.Minute,
		// Behind a load balancer: believe its X-Forwarded-For, no one else's.
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
	})
	h := limit(api)

	for i := 1; i <= 3; i++ {
		req := httptest.NewRequest(http.MethodGet, "/products", nil)
		req.RemoteAddr = "10.0.0.5:41000" // the load balancer
		req.Header.Set("X-Forwarded-For", "203.0.113.7")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		fmt.Printf("%d remaining=%s retry-after=%q\n",
			rec.Code, rec.Header().Get("RateLimit-Remaining"), rec.Header().Get("Retry-After"))
	}
	// Output:
	// 200 remaining=1 retry-after=""
	// 200 remaining=0 retry-after=""
	// 429 remaining=0 retry-after="60"
}

func ExampleCache() {
	svc, cleanup := newExampleService()
	defer cleanup()
	ctx := context.Background()

	type product struct {
		SKU   string `json:"sku"`
		Price int    `json:"priceCents"`
	}
	loads := 0
	loadProducts := func(ctx context.Context) ([]product, error) {
		loads++ // a database query in a real service
		return []product{{SKU: "A-1", Price: 250}, {SKU: "B-2", Price: 400}}, nil
	}

	for range 3 {
		products, err := redisservice.Cache(ctx, svc, "products:all", time.Minute, loadProducts)
		fmt.Println(len(products), products[0].SKU, err)
	}
	fmt.Println("loads:", loads)
	// Output:
	// 2 A-1 <nil>
	// 2 A-1 <nil>
	// 2 A-1 <nil>
	// loads: 1
}

func ExampleService_InvalidatePattern() {
	svc, cleanup := newExampleService()
	defer cleanup()
	ctx := context.Background()

	_ = svc.MSet(ctx, map[string]any{
		"products:all":        "[]",
		"products:page:1":     "[]",
		"products:page:2":     "[]",
		"search:coffee*":      "[]",
		"search:coffee beans": "[]",
	}, redisservice.WithTTL(time.Hour))

	n, err := svc.InvalidatePattern(ctx, "products:*")
	fmt.Println(n, err)

	// A user's query goes into a pattern only escaped: "coffee*" must not
	// also match "coffee beans".
	query := "coffee*"
	n, err = svc.InvalidatePattern(ctx, "search:"+redisservice.EscapePattern(query))
	fmt.Println(n, err)
	// Output:
	// 3 <nil>
	// 1 <nil>
}

func ExampleOptions_autoPipeline() {
	mr, err := miniredis.Run()
	if err != nil {
		panic(err)
	}
	defer mr.Close()
	// Concurrent callers' commands share round trips by default;
	// AutoPipeline sends a lone call through the autopipeliner too. Each
	// call still waits for its own reply, no longer than its ctx allows.
	svc, err := redisservice.New(redisservice.Options{URL: "redis://" + mr.Addr(), AutoPipeline: true})
	if err != nil {
		panic(err)
	}
	defer svc.Close()
	ctx := context.Background()

	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			_, _ = svc.Set(ctx, fmt.Sprintf("order:%d", i), "pending", redisservice.WithTTL(time.Hour))
		})
	}
	wg.Wait()
	v, found, err := svc.Get(ctx, "order:42")
	fmt.Println(v, found, err)
	// Output:
	// pending true <nil>
}

func ExampleOptions_sentinel() {
	// The sentinels name the master, and the Service follows a failover by
	// itself; the URL gives the master's password and database only.
	svc, err := redisservice.New(redisservice.Options{
		URL:              "redis://:master-secret@localhost/0",
		SentinelMaster:   "mymaster",
		SentinelAddrs:    []string{"10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26379"},
		SentinelPassword: "sentinel-secret",
	})
	fmt.Println(err) // New does not dial: Connect would reach the master
	if err == nil {
		svc.Close()
	}
	// Output:
	// <nil>
}

func Example_session() {
	svc, cleanup := newExampleService()
	defer cleanup()
	ctx := context.Background()

	id, _ := redisservice.NewSessionID()
	_ = svc.CreateSession(ctx, id, redisservice.SessionData{UserID: "u42", Role: "cashier"}, 30*time.Minute)

	s, found, _ := svc.GetSession(ctx, id)
	fmt.Println(s.UserID, s.Role, found)

	active, _ := svc.UpdateSessionActivity(ctx, id) // slides the 30-minute idle expiry
	n, _ := svc.DestroyUserSessions(ctx, "u42")     // log out everywhere
	_, found, _ = svc.GetSession(ctx, id)
	fmt.Println(active, n, found)
	// Output:
	// u42 cashier true
	// true 1 false
}

func ExampleService_UpdateSession() {
	svc, cleanup := newExampleService()
	defer cleanup()
	ctx := context.Background()

	id, _ := redisservice.NewSessionID()
	_ = svc.CreateSession(ctx, id, redisservice.SessionData{UserID: "u42",
		Values: map[string]json.RawMessage{"cart": json.RawMessage(`{"items":[]}`)}}, 30*time.Minute)

	// Read, change, write back only if nobody else wrote meanwhile (else retried).
	ok, err := svc.UpdateSession(ctx, id, func(d *redisservice.SessionData) error {
		d.Values["cart"] = json.RawMessage(`{"items":["A-1"]}`)
		d.Values["csrf"] = json.RawMessage(`"k3J9vQ"`)
		return nil
	})
	fmt.Println(ok, err)

	s, _, _ := svc.GetSession(ctx, id)
	fmt.Println(string(s.Values["cart"]), string(s.Values["csrf"]))
	// Output:
	// true <nil>
	// {"items":["A-1"]} "k3J9vQ"
}

func ExampleService_RenewSessionID() {
	svc, cleanup := newExampleService()
	defer cleanup()
	ctx := context.Background()

	id, _ := redisservice.NewSessionID()
	_ = svc.CreateSession(ctx, id, redisservice.SessionData{UserID: "u42", Role: "cashier"}, 30*time.Minute)

	// After log-in, against session fixation: same session, new id.
	newID, ok, err := svc.RenewSessionID(ctx, id)
	fmt.Println(ok, err, newID != id)

	_, oldFound, _ := svc.GetSession(ctx, id)
	s, newFound, _ := svc.GetSession(ctx, newID)
	fmt.Println(oldFound, newFound, s.UserID, s.Role)
	// Output:
	// true <nil> true
	// false true u42 cashier
}

func ExampleService_UserSessions() {
	svc, cleanup := newExampleService()
	defer cleanup()
	ctx := context.Background()

	for _, device := range []string{"phone", "laptop"} {
		id, _ := redisservice.NewSessionID()
		_ = svc.CreateSession(ctx, id, redisservice.SessionData{UserID: "u42", UserAgent: device}, 30*time.Minute)
	}

	// "Your devices": the user's live sessions by id.
	all, err := svc.UserSessions(ctx, "u42")
	var devices []string
	for _, s := range all {
		devices = append(devices, s.UserAgent)
	}
	slices.Sort(devices)
	fmt.Println(devices, err)

	n, err := svc.DestroyUserSessions(ctx, "u42") // log out everywhere
	fmt.Println(n, err)
	// Output:
	// [laptop phone] <nil>
	// 2 <nil>
}

func ExampleService_ResetRateLimit() {
	svc, cleanup := newExampleService()
	defer cleanup()
	ctx := context.Background()

	// Three attempts a minute; the fourth is refused.
	var r redisservice.RateLimitResult
	for range 4 {
		r, _ = svc.CheckRateLimit(ctx, "login:ada", time.Minute, 3)
	}
	fmt.Println(r.Allowed)

	// A successful log-in, say: the next attempt starts afresh.
	err := svc.ResetRateLimit(ctx, "login:ada")
	r, _ = svc.CheckRateLimit(ctx, "login:ada", time.Minute, 3)
	fmt.Println(err, r.Allowed, r.Remaining)
	// Output:
	// false
	// <nil> true 2
}

func ExampleService_RateLimitMiddleware_gcra() {
	svc, cleanup := newExampleService()
	defer cleanup()

	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	limit := svc.RateLimitMiddleware(redisservice.RateLimitConfig{
		// GCRA: 3 a minute on average, bursts of 3; an export costs 2.
		Limits: []redisservice.Limit{redisservice.PerMinute(3)},
		Cost: func(r *http.Request) int {
			if r.URL.Path == "/export" {
				return 2
			}
			return 1
		},
	})
	h := limit(api)

	for _, path := range []string{"/products", "/export", "/export"} {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		req.RemoteAddr = "203.0.113.7:41000"
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		fmt.Printf("%s %d remaining=%s retry-after=%q policy=%q\n", path, rec.Code,
			rec.Header().Get("RateLimit-Remaining"), rec.Header().Get("Retry-After"), rec.Header().Get("RateLimit-Policy"))
	}
	// Output:
	// /products 200 remaining=2 retry-after="" policy="3;w=60"
	// /export 200 remaining=0 retry-after="" policy="3;w=60"
	// /export 429 remaining=0 retry-after="40" policy="3;w=60"
}

func ExampleCache_staleWhileRevalidate() {
	svc, mr, cleanup := newExampleServer()
	defer cleanup()
	ctx := context.Background()

	var loads atomic.Int32
	loadPrices := func(ctx context.Context) (string, error) {
		return fmt.Sprintf("price list v%d", loads.Add(1)), nil
	}
	// Fresh for a minute; for an hour after that, a stale value is served
	// at once while one background load refreshes it.
	swr := redisservice.StaleWhileRevalidate(time.Hour)

	v, err := redisservice.Cache(ctx, svc, "prices", time.Minute, loadPrices, swr)
	fmt.Println(v, err)

	mr.FastForward(time.Minute + time.Second) // the minute is over
	v, err = redisservice.Cache(ctx, svc, "prices", time.Minute, loadPrices, swr)
	fmt.Println(v, err, "(stale)")

	// Wait for the background refresh to store v2.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		var stored string
		if found, _ := svc.GetJSON(ctx, "prices", &stored); found && stored == "price list v2" {
			break
		}
	}
	v, err = redisservice.Cache(ctx, svc, "prices", time.Minute, loadPrices, swr)
	fmt.Println(v, err, "loads:", loads.Load())
	// Output:
	// price list v1 <nil>
	// price list v1 <nil> (stale)
	// price list v2 <nil> loads: 2
}

func ExampleCache_notFoundTTL() {
	svc, mr, cleanup := newExampleServer()
	defer cleanup()
	ctx := context.Background()

	type product struct {
		SKU string `json:"sku"`
	}
	loads := 0
	findProduct := func(ctx context.Context) (product, error) {
		loads++ // the database has no product Z-9
		return product{}, fmt.Errorf("sku Z-9: %w", redisservice.ErrNotFound)
	}
	// The absence is remembered for 30 seconds: no load in that time.
	for range 3 {
		_, err := redisservice.Cache(ctx, svc, "product:Z-9", time.Hour, findProduct, redisservice.NotFoundTTL(30*time.Second))
		fmt.Println(errors.Is(err, redisservice.ErrNotFound), "loads:", loads)
	}
	mr.FastForward(31 * time.Second)
	_, err := redisservice.Cache(ctx, svc, "product:Z-9", time.Hour, findProduct, redisservice.NotFoundTTL(30*time.Second))
	fmt.Println(errors.Is(err, redisservice.ErrNotFound), "loads:", loads)
	// Output:
	// true loads: 1
	// true loads: 1
	// true loads: 1
	// true loads: 2
}

func ExampleService_HealthHandler() {
	svc, mr, cleanup := newExampleServer()
	defer cleanup()

	healthz := svc.HealthHandler() // mux.Handle("/healthz", healthz)
	probe := func() {
		rec := httptest.NewRecorder()
		healthz.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
		var rep redisservice.HealthReport // {"status":"ok","latencyMs":0.21}
		_ = json.Unmarshal(rec.Body.Bytes(), &rep)
		fmt.Println(rec.Code, rec.Header().Get("Content-Type"), rep.Status)
	}
	probe()
	mr.Close() // Redis goes away
	probe()
	// Output:
	// 200 application/json ok
	// 503 application/json unavailable
}

func ExampleService_Stats() {
	svc, mr, cleanup := newExampleServer()
	defer cleanup()
	ctx := context.Background()

	_, _ = svc.Set(ctx, "greeting", "hello")
	_, _, _ = svc.Get(ctx, "greeting")
	_, _, _ = svc.Get(ctx, "missing")
	st := svc.Stats()
	fmt.Printf("hits=%d misses=%d errors=%d connected=%v\n", st.Hits, st.Misses, st.Errors, st.Connected)

	mr.Close() // an outage: every call returns its fallback with an error
	v, found, err := svc.Get(ctx, "greeting")
	fmt.Printf("%q %v %v connected=%v\n", v, found, err != nil, svc.IsConnected())
	// While Redis is known to be down, calls do not wait for it.
	_, _, err = svc.Get(ctx, "greeting")
	fmt.Println(errors.Is(err, redisservice.ErrUnavailable))
	st = svc.Stats()
	fmt.Printf("errors=%d fallbacks=%d\n", st.Errors, st.Fallbacks)
	// Output:
	// hits=1 misses=1 errors=0 connected=true
	// "" false true connected=false
	// true
	// errors=2 fallbacks=2
}

func ExampleSlogLogger() {
	// The application's logger (here without timestamps, for the output below).
	logger := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
	rl := redisservice.SlogLogger(logger)
	// In main, once, before making clients:
	//
	//	redis.SetLogger(rl)
	//
	// Here go-redis's own calls are played by hand.
	for range 3 { // a burst: one line a second gets through
		rl.Printf(context.Background(), "redis: connection pool: failed to dial after %d attempts: %v", 1, "connection refused")
	}
	rl.Printf(context.Background(), "sentinel: new master=%q addr=%q", "pos", "redis://app:secret@10.0.0.7:6379")
	// Output:
	// level=WARN msg="redis: connection pool: failed to dial after 1 attempts: connection refused" logger=go-redis suppressed=0
	// level=WARN msg="sentinel: new master=\"pos\" addr=\"redis://xxxxx@10.0.0.7:6379\"" logger=go-redis suppressed=0
}
