// Command quickstart tours the redisservice API. With REDIS_URL unset it
// runs against an embedded miniredis; with REDIS_URL set, against that
// Redis, under the key prefix "quickstart:" (it deletes only its own keys).
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
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

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// go-redis's own lines (dial failures during an outage) go to slog,
	// at most one a second per kind, instead of stderr.
	redis.SetLogger(redisservice.SlogLogger(slog.Default()))

	url, embedded, stop, err := devredis.URL()
	if err != nil {
		return err
	}
	defer stop()
	if embedded {
		fmt.Println("REDIS_URL unset: using an embedded miniredis")
	} else {
		fmt.Println("using REDIS_URL")
	}

	svc, err := redisservice.New(redisservice.Options{URL: url, KeyPrefix: "quickstart:"})
	if err != nil {
		return err
	}
	defer svc.Close()
	if err := svc.Connect(ctx); err != nil {
		return err
	}
	defer cleanUp(url) // leave nothing behind

	for _, step := range []struct {
		name string
		fn   func(context.Context, *redisservice.Service) error
	}{
		{"strings and TTLs", stringsAndKeys},
		{"JSON and hashes", jsonAndHashes},
		{"sessions", sessions},
		{"rate limiting", rateLimit},
		{"cache-aside", cacheAside},
		{"health", health},
	} {
		fmt.Printf("== %s\n", step.name)
		if err := step.fn(ctx, svc); err != nil {
			return fmt.Errorf("%s: %w", step.name, err)
		}
	}
	return nil
}

// cleanUp deletes every key the tour wrote. InvalidatePattern spares the
// Service's own keys (sessions, rate limits) unless AllowReservedKeys,
// which a tool like this one sets and an application does not.
func cleanUp(url string) {
	svc, err := redisservice.New(redisservice.Options{URL: url, KeyPrefix: "quickstart:", AllowReservedKeys: true})
	if err != nil {
		return
	}
	defer svc.Close()
	_, _ = svc.InvalidatePattern(context.Background(), "*")
}

func stringsAndKeys(ctx context.Context, svc *redisservice.Service) error {
	if _, err := svc.Set(ctx, "greeting", "hello", redisservice.WithTTL(1500*time.Millisecond)); err != nil {
		return err
	}
	v, found, err := svc.Get(ctx, "greeting")
	if err != nil {
		return err
	}
	ttl, err := svc.TTL(ctx, "greeting")
	if err != nil {
		return err
	}
	fmt.Printf("Get(greeting) = %q found=%v, TTL about %v\n", v, found, ttl.Round(100*time.Millisecond))

	created, err := svc.Set(ctx, "greeting", "again", redisservice.NX())
	if err != nil {
		return err
	}
	fmt.Printf("Set(greeting, NX) on an existing key wrote: %v\n", created)

	if err := svc.MSet(ctx, map[string]any{"a": 1, "b": 2}, redisservice.WithTTL(time.Minute)); err != nil {
		return err
	}
	m, err := svc.MGet(ctx, "a", "b", "missing")
	if err != nil {
		return err
	}
	fmt.Printf("MGet(a, b, missing) = %v\n", m)
	n, err := svc.Del(ctx, "a", "b", "missing")
	fmt.Printf("Del(a, b, missing) = %d\n", n)
	return err
}

type product struct {
	SKU   string `json:"sku"`
	Name  string `json:"name"`
	Price int    `json:"priceCents"`
}

func jsonAndHashes(ctx context.Context, svc *redisservice.Service) error {
	if _, err := svc.SetJSON(ctx, "product:A-1", product{"A-1", "Espresso", 250}); err != nil {
		return err
	}
	var p product
	found, err := svc.GetJSON(ctx, "product:A-1", &p)
	if err != nil {
		return err
	}
	fmt.Printf("GetJSON(product:A-1) = %+v found=%v\n", p, found)

	if err := svc.HSet(ctx, "register:1", "cashier", "ada"); err != nil {
		return err
	}
	h, err := svc.HGetAll(ctx, "register:1")
	fmt.Printf("HGetAll(register:1) = %v\n", h)
	return err
}

func sessions(ctx context.Context, svc *redisservice.Service) error {
	id, err := redisservice.NewSessionID()
	if err != nil {
		return err
	}
	now := time.Now()
	data := redisservice.SessionData{UserID: "u42", Email: "ada@example.com", Role: "cashier", CreatedAt: now, LastActivity: now}
	if err := svc.CreateSession(ctx, id, data, 30*time.Minute); err != nil {
		return err
	}
	got, found, err := svc.GetSession(ctx, id)
	if err != nil {
		return err
	}
	fmt.Printf("GetSession = user %s role %s found=%v\n", got.UserID, got.Role, found)
	if _, err := svc.UpdateSessionActivity(ctx, id); err != nil {
		return err
	}
	n, err := svc.DestroyUserSessions(ctx, "u42")
	fmt.Printf("DestroyUserSessions(u42) = %d\n", n)
	return err
}

func rateLimit(ctx context.Context, svc *redisservice.Service) error {
	for i := range 4 {
		r, err := svc.CheckRateLimit(ctx, "login:203.0.113.7", time.Minute, 3)
		if err != nil {
			return err
		}
		fmt.Printf("attempt %d: allowed=%v remaining=%d\n", i+1, r.Allowed, r.Remaining)
	}
	return nil
}

func cacheAside(ctx context.Context, svc *redisservice.Service) error {
	loads := 0
	load := func(context.Context) ([]product, error) {
		loads++
		return []product{{"A-1", "Espresso", 250}}, nil
	}
	for range 3 {
		if _, err := redisservice.Cache(ctx, svc, "products", time.Minute, load); err != nil {
			return err
		}
	}
	fmt.Printf("Cache called 3 times, loader ran %d time(s)\n", loads)
	n, err := svc.InvalidatePattern(ctx, "product*")
	fmt.Printf("InvalidatePattern(product*) deleted %d key(s)\n", n)
	return err
}

func health(ctx context.Context, svc *redisservice.Service) error {
	if err := svc.HealthCheck(ctx); err != nil {
		return err
	}
	st := svc.Stats()
	fmt.Printf("healthy; connected=%v errors=%d\n", svc.IsConnected(), st.Errors)
	err := svc.FlushAll(ctx)
	fmt.Printf("FlushAll refused: %v\n", errors.Is(err, redisservice.ErrFlushDisabled))
	return nil
}
