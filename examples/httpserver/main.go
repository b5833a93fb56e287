// Command httpserver is a small point-of-sale API built on redisservice:
// a cached product list invalidated on update, rate-limited endpoints with
// the RateLimit headers, cookie sessions (a SessionManager) with a cart
// and log-out-everywhere, a checkout that charges once per
// Idempotency-Key and writes stock under a fenced lock, a health
// endpoint, OpenTelemetry metrics served for Prometheus at /metrics, and
// graceful shutdown on SIGINT or SIGTERM.
//
// With REDIS_URL unset it runs against an embedded miniredis. ADDR sets
// the listen address (default 127.0.0.1:8080).
//
//	cd examples/httpserver && go run .   # a module of its own
//	curl -i -c jar -d '{"email":"ada@example.com","password":"espresso"}' localhost:8080/login
//	curl -i -b jar localhost:8080/products
//	curl -i -b jar -X POST localhost:8080/cart/A-1
//	curl -i -b jar -H 'Idempotency-Key: "ord-7f3a"' -d '{"sku":"A-1","qty":2}' localhost:8080/checkout
//	curl -s localhost:8080/metrics | grep redisservice
package main

import (
	"context"
	"errors"
	"log"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
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
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	// go-redis's own lines (dial failures during an outage) go to slog,
	// at most one a second per kind, instead of stderr.
	redis.SetLogger(redisservice.SlogLogger(slog.Default()))

	url, embedded, stop, err := devredis.URL()
	if err != nil {
		return err
	}
	defer stop()
	if embedded {
		slog.Info("REDIS_URL unset: using an embedded miniredis")
	}
	mp, metrics, err := newMetrics()
	if err != nil {
		return err
	}
	defer shutdownMetrics(mp)
	svc, err := redisservice.New(redisservice.Options{URL: url, KeyPrefix: "pos:", MeterProvider: mp})
	if err != nil {
		return err
	}
	defer svc.Close()
	if err := svc.Connect(ctx); err != nil {
		// Not fatal: every call degrades to its fallback until Redis is back.
		slog.Warn("redis unreachable at start", "error", err)
	}

	addr := os.Getenv("ADDR")
	if addr == "" {
		addr = "127.0.0.1:8080"
	}
	api, err := newServer(svc, newCatalog())
	if err != nil {
		return err
	}
	srv := &http.Server{
		Addr:              addr,
		Handler:           withMetrics(api, metrics),
		ReadHeaderTimeout: 5 * time.Second,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	slog.Info("listening", "addr", addr)

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	slog.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
