// Command quickstart tours every call of the redisservice API, one
// function per part: strings and keys, JSON and hashes, sessions, rate
// limits and their middleware, cache-aside, the local tier, health and
// lifecycle.
//
// With REDIS_URL unset it runs against an embedded miniredis; with
// REDIS_URL set, against that Redis, under the key prefix "quickstart:".
// It deletes only keys under that prefix, and leaves none behind.
//
//	go run ./examples/quickstart
//	REDIS_URL=redis://localhost:6379/0 go run ./examples/quickstart
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sort"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vevurn/redisservice"
	"github.com/vevurn/redisservice/examples/internal/devredis"
)

func main() {
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

// tour is what every part of the tour works with.
type tour struct {
	svc *redisservice.Service
	srv *devredis.Server
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// go-redis's own lines (dial failures during an outage) go to slog,
	// at most one a second per kind, instead of stderr.
	redis.SetLogger(redisservice.SlogLogger(slog.Default()))

	srv, err := devredis.Start()
	if err != nil {
		return err
	}
	defer srv.Close()
	if srv.Embedded() {
		fmt.Println("REDIS_URL unset: using an embedded miniredis")
	} else {
		fmt.Println("using the Redis in REDIS_URL, keys under quickstart:")
	}

	// New validates and never dials; Connect fails fast when Redis is not
	// there (the Service would also connect by itself later).
	svc, err := redisservice.New(redisservice.Options{URL: srv.URL, KeyPrefix: "quickstart:"})
	if err != nil {
		return err
	}
	defer svc.Close()
	if err := svc.Connect(ctx); err != nil {
		return err
	}
	// Only this tour's keys (under its KeyPrefix), before and after.
	cleanUp(srv.URL)
	defer cleanUp(srv.URL)

	t := &tour{svc: svc, srv: srv}
	for _, step := range []struct {
		name string
		fn   func(context.Context) error
	}{
		{"strings and keys", t.stringsAndKeys},
		{"JSON and hashes", t.jsonAndHashes},
		{"sessions", t.sessions},
		{"rate limits", t.rateLimits},
		{"rate-limit middleware", t.middleware},
		{"a log-in limited per IP and per user", t.loginLimits},
		{"sessions over HTTP", t.httpSessions},
		{"payments: Idempotency-Key and locks", t.payments},
		{"cache-aside", t.cacheAside},
		{"local tier", t.localTier},
		{"health, stats and lifecycle", t.health},
	} {
		fmt.Printf("\n== %s\n", step.name)
		if err := step.fn(ctx); err != nil {
			return fmt.Errorf("%s: %w", step.name, err)
		}
	}
	return nil
}

// cleanUp deletes every key under the tour's prefix, sessions and rate-limit
// state included: InvalidatePattern spares the reserved namespaces unless
// AllowReservedKeys is set.
func cleanUp(url string) {
	svc, err := redisservice.New(redisservice.Options{URL: url, KeyPrefix: "quickstart:", AllowReservedKeys: true})
	if err != nil {
		return
	}
	defer svc.Close()
	_, _ = svc.InvalidatePattern(context.Background(), "*")
}

func (t *tour) stringsAndKeys(ctx context.Context) error {
	svc := t.svc
	if _, err := svc.Set(ctx, "greeting", "hello", redisservice.WithTTL(1500*time.Millisecond)); err != nil {
		return err
	}
	v, found, err := svc.Get(ctx, "greeting")
	if err != nil {
		return err
	}
	ttl, err := svc.TTL(ctx, "greeting") // milliseconds are kept
	if err != nil {
		return err
	}
	fmt.Printf("Get(greeting) = %q, %v; TTL about %v\n", v, found, ttl.Round(100*time.Millisecond))

	wrote, err := svc.Set(ctx, "greeting", "again", redisservice.NX())
	if err != nil {
		return err
	}
	fmt.Printf("Set(greeting, NX) on an existing key wrote: %v\n", wrote)
	wrote, err = svc.Set(ctx, "greeting", "hi", redisservice.XX(), redisservice.KeepTTL())
	if err != nil {
		return err
	}
	v, _, _ = svc.Get(ctx, "greeting")
	fmt.Printf("Set(greeting, XX, KeepTTL) wrote: %v, now %q\n", wrote, v)

	extended, err := svc.Expire(ctx, "greeting", time.Minute)
	if err != nil {
		return err
	}
	exists, err := svc.Exists(ctx, "greeting")
	if err != nil {
		return err
	}
	_, missing, err := svc.Get(ctx, "no-such-key") // a miss is not an error
	fmt.Printf("Expire(greeting, 1m) = %v; Exists(greeting) = %v; Get(no-such-key) found = %v, err = %v\n", extended, exists, missing, err)

	if err := svc.MSet(ctx, map[string]any{"a": 1, "b": 2}, redisservice.WithTTL(time.Minute)); err != nil {
		return err
	}
	m, err := svc.MGet(ctx, "a", "b", "missing")
	if err != nil {
		return err
	}
	n, err := svc.Del(ctx, "a", "b", "missing")
	if err != nil {
		return err
	}
	fmt.Printf("MGet(a, b, missing) = %v; Del(a, b, missing) = %d\n", m, n)

	// Keys the Service keeps for itself cannot be written by name.
	_, err = svc.Set(ctx, "session:forged", "x")
	fmt.Printf("Set(session:forged) refused: %v\n", errors.Is(err, redisservice.ErrInvalidKey))

	// Commands the Service does not wrap: Client and Key (add the prefix
	// yourself), or Run, which also bounds, counts and logs the call.
	visits, err := svc.Client().Incr(ctx, svc.Key("visits")).Result()
	if err != nil {
		return err
	}
	var length int64
	err = svc.Run(ctx, "append", "log", func(ctx context.Context, rdb redis.UniversalClient) error {
		var err error
		length, err = rdb.Append(ctx, svc.Key("log"), "opened;").Result()
		return err
	})
	fmt.Printf("INCR %s = %d; Run(APPEND log) = %d\n", svc.Key("visits"), visits, length)
	return err
}

type product struct {
	SKU   string `json:"sku"`
	Name  string `json:"name"`
	Price int    `json:"priceCents"`
}

func (t *tour) jsonAndHashes(ctx context.Context) error {
	svc := t.svc
	if _, err := svc.SetJSON(ctx, "product:A-1", product{"A-1", "Espresso", 250}, redisservice.WithTTL(time.Hour)); err != nil {
		return err
	}
	var p product
	found, err := svc.GetJSON(ctx, "product:A-1", &p)
	if err != nil {
		return err
	}
	fmt.Printf("GetJSON(product:A-1) = %+v, %v\n", p, found)

	for field, value := range map[string]any{"cashier": "ada", "float": 20000} {
		if err := svc.HSet(ctx, "register:1", field, value); err != nil {
			return err
		}
	}
	cashier, found, err := svc.HGet(ctx, "register:1", "cashier")
	if err != nil {
		return err
	}
	removed, err := svc.HDel(ctx, "register:1", "float", "no-such-field")
	if err != nil {
		return err
	}
	h, err := svc.HGetAll(ctx, "register:1")
	fmt.Printf("HGet(register:1, cashier) = %q, %v; HDel(float, no-such-field) = %d; HGetAll = %v\n", cashier, found, removed, h)
	return err
}

func (t *tour) sessions(ctx context.Context) error {
	svc := t.svc
	id, err := redisservice.NewSessionID() // 256 random bits, URL-safe
	if err != nil {
		return err
	}
	data := redisservice.SessionData{
		UserID: "u42", Email: "ada@example.com", Role: "cashier", IP: "203.0.113.7", UserAgent: "register-1",
		Values: map[string]json.RawMessage{"cart": json.RawMessage(`{"items":[]}`)}, // the application's own fields
	}
	if err := svc.CreateSession(ctx, id, data, 30*time.Minute); err != nil { // idle timeout: 30 minutes
		return err
	}
	got, found, err := svc.GetSession(ctx, id)
	if err != nil {
		return err
	}
	fmt.Printf("GetSession = user %s, role %s, cart %s, found %v\n", got.UserID, got.Role, got.Values["cart"], found)

	active, err := svc.UpdateSessionActivity(ctx, id) // slides the idle timeout
	if err != nil {
		return err
	}
	updated, err := svc.UpdateSession(ctx, id, func(d *redisservice.SessionData) error {
		d.Values["cart"] = json.RawMessage(`{"items":["A-1"]}`) // check-and-set: no concurrent change is lost
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Printf("UpdateSessionActivity = %v; UpdateSession = %v\n", active, updated)

	newID, renewed, err := svc.RenewSessionID(ctx, id) // after log-in, against session fixation
	if err != nil {
		return err
	}
	_, oldFound, err := svc.GetSession(ctx, id)
	if err != nil {
		return err
	}
	fmt.Printf("RenewSessionID = new id %v, %v; the old id found: %v\n", newID != id, renewed, oldFound)

	phone, err := redisservice.NewSessionID()
	if err != nil {
		return err
	}
	if err := svc.CreateSession(ctx, phone, redisservice.SessionData{UserID: "u42", UserAgent: "phone"}, time.Hour); err != nil {
		return err
	}
	all, err := svc.UserSessions(ctx, "u42") // "your devices"
	if err != nil {
		return err
	}
	var devices []string
	for _, s := range all {
		devices = append(devices, s.UserAgent)
	}
	sort.Strings(devices)
	fmt.Printf("UserSessions(u42) = %v\n", devices)

	destroyed, err := svc.DestroySession(ctx, phone) // log out this device
	if err != nil {
		return err
	}
	n, err := svc.DestroyUserSessions(ctx, "u42") // log out everywhere
	fmt.Printf("DestroySession(phone) = %v; DestroyUserSessions(u42) = %d\n", destroyed, n)
	return err
}

func (t *tour) rateLimits(ctx context.Context) error {
	svc := t.svc
	// A fixed window: 3 log-in attempts a minute.
	for i := range 4 {
		r, err := svc.CheckRateLimit(ctx, "login:203.0.113.7", time.Minute, 3)
		if err != nil {
			return err // with the error comes a fallback: allowed, unless Options.RateLimitFailClosed
		}
		fmt.Printf("CheckRateLimit attempt %d: allowed=%v remaining=%d retry after about %v\n",
			i+1, r.Allowed, r.Remaining, r.RetryAfter.Round(time.Second))
	}
	if err := svc.ResetRateLimit(ctx, "login:203.0.113.7"); err != nil { // a successful log-in, say
		return err
	}
	r, err := svc.CheckRateLimit(ctx, "login:203.0.113.7", time.Minute, 3)
	if err != nil {
		return err
	}
	fmt.Printf("after ResetRateLimit: allowed=%v remaining=%d\n", r.Allowed, r.Remaining)

	// GCRA: 5 exports a minute (bursts of 5) and 100 an hour, decided
	// together; an export of 2 files costs 2 tokens.
	limits := []redisservice.Limit{redisservice.PerMinute(5), redisservice.PerHour(100)}
	for _, cost := range []int{2, 2, 2, 0} {
		r, err := svc.AllowN(ctx, "export:ada", cost, limits...)
		if err != nil {
			return err
		}
		fmt.Printf("AllowN(cost %d): allowed=%v remaining=%d retry after about %v\n",
			cost, r.Allowed, r.Remaining, r.RetryAfter.Round(time.Second))
	}
	r, err = svc.AllowN(ctx, "ping:ada", 1, redisservice.PerSecond(10))
	fmt.Printf("AllowN(PerSecond(10)): allowed=%v remaining=%d\n", r.Allowed, r.Remaining)
	return err
}

func (t *tour) middleware(ctx context.Context) error {
	svc := t.svc
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "products") })
	var failures atomic.Int32
	fixed := svc.RateLimitMiddleware(redisservice.RateLimitConfig{
		Limit:  2,
		Window: time.Minute,
		// Behind a load balancer: believe its X-Forwarded-For, no one else's.
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		OnError:        func(*http.Request, error) { failures.Add(1) }, // Redis could not be asked
	})(api)
	for i := range 3 {
		rec := serve(ctx, fixed, "/products", func(r *http.Request) {
			r.RemoteAddr = "10.0.0.5:41000" // the load balancer
			r.Header.Set("X-Forwarded-For", "203.0.113.7")
		})
		fmt.Printf("fixed window, request %d: %d RateLimit-Remaining=%s Retry-After=%q\n",
			i+1, rec.Code, rec.Header().Get("RateLimit-Remaining"), rec.Header().Get("Retry-After"))
	}

	gcra := svc.RateLimitMiddleware(redisservice.RateLimitConfig{
		Limits: []redisservice.Limit{redisservice.PerSecond(10), redisservice.PerHour(1000)},
		Cost: func(r *http.Request) int {
			if r.URL.Path == "/export" {
				return 5
			}
			return 1
		},
		HeaderVersion: redisservice.HeadersDraft11,
	})(api)
	rec := serve(ctx, gcra, "/export", func(r *http.Request) { r.RemoteAddr = "[2001:db8::1]:41000" }) // keyed on its /64
	fmt.Printf("GCRA, an export: %d RateLimit=%s\n  RateLimit-Policy=%s\n", rec.Code, rec.Header().Get("RateLimit"), rec.Header().Get("RateLimit-Policy"))
	fmt.Printf("requests that found Redis unreachable: %d\n", failures.Load())
	return nil
}

// serve runs one request through h and returns the response.
func serve(ctx context.Context, h http.Handler, path string, edit func(*http.Request)) *httptest.ResponseRecorder {
	req := httptest.NewRequestWithContext(ctx, http.MethodGet, path, nil)
	edit(req)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func (t *tour) cacheAside(ctx context.Context) error {
	svc := t.svc
	var loads atomic.Int32
	loadProducts := func(context.Context) ([]product, error) {
		loads.Add(1) // a database query in a real service
		return []product{{"A-1", "Espresso", 250}}, nil
	}
	for range 3 {
		if _, err := redisservice.Cache(ctx, svc, "products", time.Minute, loadProducts); err != nil {
			return err // with the error comes the loader's value, unless the loader failed
		}
	}
	fmt.Printf("Cache(products) called 3 times, loaded %d time(s)\n", loads.Load())
	// One process of a fleet is all there is: no lock key on a miss.
	if _, err := redisservice.Cache(ctx, svc, "products:solo", time.Minute, loadProducts, redisservice.WithoutFleetLock()); err != nil {
		return err
	}

	if err := t.staleWhileRevalidate(ctx); err != nil {
		return err
	}

	// A product the database does not have: the absence is remembered.
	var misses atomic.Int32
	findProduct := func(context.Context) (product, error) {
		misses.Add(1)
		return product{}, fmt.Errorf("sku Z-9: %w", redisservice.ErrNotFound)
	}
	for range 3 {
		_, err := redisservice.Cache(ctx, svc, "product:Z-9", time.Minute, findProduct, redisservice.NotFoundTTL(30*time.Second))
		if !errors.Is(err, redisservice.ErrNotFound) {
			return fmt.Errorf("Cache(product:Z-9) = %w; want ErrNotFound", err)
		}
	}
	fmt.Printf("Cache(product:Z-9) with NotFoundTTL: ErrNotFound 3 times, loaded %d time(s)\n", misses.Load())

	if _, err := svc.SetJSON(ctx, "search:coffee*", []string{"A-1"}); err != nil {
		return err
	}
	if _, err := svc.SetJSON(ctx, "search:coffee beans", []string{"B-2"}); err != nil {
		return err
	}
	n, err := svc.InvalidatePattern(ctx, "product*")
	if err != nil {
		return err
	}
	// User input goes into a pattern escaped: "coffee*" must not match "coffee beans".
	m, err := svc.InvalidatePattern(ctx, "search:"+redisservice.EscapePattern("coffee*"))
	fmt.Printf("InvalidatePattern(product*) deleted %d key(s); of search:coffee\\* %d\n", n, m)
	return err
}

// staleWhileRevalidate serves a value past its TTL while one background
// load refreshes it.
func (t *tour) staleWhileRevalidate(ctx context.Context) error {
	svc := t.svc
	var version atomic.Int32
	loadPrices := func(context.Context) (string, error) {
		return fmt.Sprintf("prices v%d", version.Add(1)), nil
	}
	swr := redisservice.StaleWhileRevalidate(time.Minute)
	if _, err := redisservice.Cache(ctx, svc, "prices", time.Second, loadPrices, swr); err != nil {
		return err
	}
	t.srv.Elapse(1100 * time.Millisecond) // the second is over
	v, err := redisservice.Cache(ctx, svc, "prices", time.Second, loadPrices, swr)
	if err != nil {
		return err
	}
	fmt.Printf("StaleWhileRevalidate: after its TTL, Cache(prices) = %q at once\n", v)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		var stored string
		if found, err := svc.GetJSON(ctx, "prices", &stored); err != nil || (found && stored == "prices v2") {
			break
		}
	}
	v, err = redisservice.Cache(ctx, svc, "prices", time.Second, loadPrices, swr)
	fmt.Printf("  and once the background load stored its value, %q\n", v)
	return err
}

func (t *tour) localTier(ctx context.Context) error {
	// Decoded Cache values kept in process, dropped when their key changes
	// in Redis (by any client) through CLIENT TRACKING.
	local, err := redisservice.New(redisservice.Options{
		URL:               t.srv.URL,
		KeyPrefix:         "quickstart:",
		LocalCacheEntries: 1000,
		Logger:            slog.New(slog.DiscardHandler), // on miniredis it would say why the tier is off
	})
	if err != nil {
		return err
	}
	defer local.Close()
	if t.srv.Embedded() {
		fmt.Printf("LocalCacheActive = %v: miniredis has no CLIENT TRACKING, so the tier switches itself off\n", local.LocalCacheActive())
		fmt.Println("  (logging why) and Cache reads Redis on every call; set REDIS_URL to a Redis 6+ to see it")
		return nil
	}
	for deadline := time.Now().Add(5 * time.Second); !local.LocalCacheActive() && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	fmt.Printf("LocalCacheActive = %v\n", local.LocalCacheActive())
	if !local.LocalCacheActive() {
		return nil // a server without CLIENT TRACKING: Cache works, without the tier
	}

	loadMenu := func(context.Context) ([]string, error) { return []string{"espresso"}, nil }
	perHit := func(svc *redisservice.Service) (time.Duration, error) {
		const hits = 200
		start := time.Now()
		for range hits {
			if _, err := redisservice.Cache(ctx, svc, "menu", time.Minute, loadMenu); err != nil {
				return 0, err
			}
		}
		return time.Since(start) / hits, nil
	}
	if _, err := redisservice.Cache(ctx, local, "menu", time.Minute, loadMenu); err != nil {
		return err
	}
	inProcess, err := perHit(local)
	if err != nil {
		return err
	}
	fromRedis, err := perHit(t.svc) // the same key, without the tier
	if err != nil {
		return err
	}
	fmt.Printf("a hit in process: about %v; from Redis: about %v\n", inProcess.Round(100*time.Nanosecond), fromRedis.Round(time.Microsecond))

	// Another client writes the key: the copy is dropped within milliseconds.
	if _, err := t.svc.SetJSON(ctx, "menu", []string{"espresso", "tea"}, redisservice.WithTTL(time.Minute)); err != nil {
		return err
	}
	start := time.Now()
	for time.Since(start) < 5*time.Second {
		menu, err := redisservice.Cache(ctx, local, "menu", time.Minute, loadMenu)
		if err != nil {
			return err
		}
		if len(menu) == 2 {
			fmt.Printf("after another client's write, Cache returned the new value %v (within %v)\n", menu, time.Since(start).Round(10*time.Microsecond))
			return nil
		}
		time.Sleep(time.Millisecond)
	}
	return errors.New("the local copy outlived its key's change")
}

func (t *tour) health(ctx context.Context) error {
	svc := t.svc
	if err := svc.HealthCheck(ctx); err != nil {
		return err
	}
	rec := serve(ctx, svc.HealthHandler(), "/healthz", func(*http.Request) {})
	fmt.Printf("HealthCheck ok; HealthHandler: %d %s", rec.Code, rec.Body.String())

	info, err := svc.Info(ctx, "clients")
	if err != nil {
		return err
	}
	st := svc.Stats()
	fmt.Printf("Info(clients): connected_clients=%s; Stats: hits=%d misses=%d errors=%d pool conns=%d; IsConnected=%v\n",
		info["connected_clients"], st.Hits, st.Misses, st.Errors, st.Pool.TotalConns, svc.IsConnected())

	err = svc.FlushAll(ctx) // refused unless Options.AllowFlushAll
	fmt.Printf("FlushAll refused: %v\n", errors.Is(err, redisservice.ErrFlushDisabled))

	// After Close every call returns its fallback with ErrClosed.
	closed, err := redisservice.New(redisservice.Options{URL: t.srv.URL, KeyPrefix: "quickstart:"})
	if err != nil {
		return err
	}
	first, second := closed.Close(), closed.Close()
	v, found, err := closed.Get(ctx, "greeting")
	fmt.Printf("Close() = %v, again %v; then Get = %q, %v, ErrClosed: %v\n", first, second, v, found, errors.Is(err, redisservice.ErrClosed))
	return nil
}
