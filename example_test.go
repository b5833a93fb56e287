package redisservice_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"sync"
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
	// Concurrent callers' commands share round trips; each call still
	// waits for its own reply.
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

	newID, ok, _ := svc.RenewSessionID(ctx, id) // after log-in: against session fixation
	s, _, _ := svc.GetSession(ctx, newID)
	fmt.Println(ok, string(s.Values["cart"]), string(s.Values["csrf"]))
	_, found, _ := svc.GetSession(ctx, id)
	all, _ := svc.UserSessions(ctx, "u42")
	fmt.Println(found, len(all))
	// Output:
	// true <nil>
	// true {"items":["A-1"]} "k3J9vQ"
	// false 1
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
