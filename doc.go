// Package redisservice is the Redis layer of a Go service: one [Service]
// over a go-redis v9 client (single node, Redis Cluster or Sentinel, plain
// or TLS) for strings, JSON and hashes with millisecond TTLs; sessions that
// carry the application's fields, with cookie sessions for net/http
// ([SessionManager]); fixed-window and GCRA rate limits, one key or several
// at once, with middleware; cache-aside with one load per key, a coherent
// in-process tier and pattern invalidation ([Cache]); Idempotency-Key
// middleware and fenced locks; health checks, counters and OpenTelemetry.
//
// Every method is safe for concurrent use, and on failure returns a safe
// fallback value (a miss, false, 0, an empty map, the loader's result)
// together with an error, so that a Redis outage degrades a product instead
// of breaking it. A miss is not an error. Every Redis round trip is bounded
// by the caller's deadline or [Options.Timeout]; while Redis is known to be
// down, calls fail fast with [ErrUnavailable]. Values given as any are
// written as go-redis writes them; a struct fails with [ErrInvalidArgument]
// (use [Service.SetJSON]). The docs/ folder of the repository has the
// reference pages, and docs/errors-and-fallbacks.md what each result means
// when err != nil.
//
// Quick start:
//
//	svc, err := redisservice.New(redisservice.Options{URL: "redis://localhost:6379", KeyPrefix: "pos:"})
//	ok, err := svc.Set(ctx, "greeting", "hello", redisservice.WithTTL(time.Minute))
package redisservice
