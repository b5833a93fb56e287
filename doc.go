// Package redisservice is the Redis layer of a Go service: one [Service]
// over a go-redis v9 client (single node, Redis Cluster or Sentinel, plain
// or TLS) that gives
//
//   - strings and keys with millisecond TTLs, NX, XX and KEEPTTL
//     ([Service.Set], [Service.Get], [Service.MGet], [Service.MSet], …);
//   - JSON values stored as plain JSON text ([Service.SetJSON], [Service.GetJSON]);
//   - hashes ([Service.HSet], [Service.HGetAll], …);
//   - sessions that carry the application's own fields byte for byte, with
//     sliding and absolute expiry, check-and-set updates, id rotation and
//     log-out-everywhere ([Service.CreateSession], [Service.UpdateSession],
//     [Service.RenewSessionID], [Service.DestroyUserSessions], …);
//   - rate limiting in one atomic round trip: a fixed window, or GCRA limits
//     with bursts and a cost, several decided at once, with net/http
//     middleware ([Service.CheckRateLimit], [Service.AllowN],
//     [Service.RateLimitMiddleware]);
//   - cache-aside with one load per key in the process and across a fleet,
//     an optional coherent in-process tier of decoded values,
//     stale-while-revalidate and not-found caching, and pattern
//     invalidation that is safe on large keyspaces and clusters
//     ([Cache], [Service.InvalidatePattern]);
//   - health checks, an HTTP health handler, counters and OpenTelemetry
//     metrics and spans ([Service.HealthCheck], [Service.HealthHandler],
//     [Service.Stats], [Options.MeterProvider]).
//
// Every method is safe for concurrent use, and on failure returns a safe
// fallback value (a miss, false, 0, an empty map, the loader's result)
// together with an error, so that a Redis outage degrades a product instead
// of breaking it. A miss is not an error. Every Redis round trip is bounded
// in time by the caller's deadline or [Options.Timeout], and so is each
// [Cache] load, with one exception: with [Options.AutoPipeline] a queued
// command is bounded by the socket timeouts rather than the caller's
// deadline. While Redis is known to be
// down, calls fail fast with [ErrUnavailable] (see [Service.IsConnected]).
//
// # Writable values
//
// [Service.Set], [Service.HSet] and [Service.MSet] take a value of type
// any, written as go-redis writes it: nil (as ""), string, []byte, the
// integer, float and bool types and pointers to them, time.Time (RFC 3339
// with nanoseconds), time.Duration (nanoseconds), net.IP, or an
// [encoding.BinaryMarshaler] (its bytes). Any other value, a struct
// included, fails with [ErrInvalidArgument] before anything is sent or
// queued; use [Service.SetJSON] for structs.
//
// Quick start:
//
//	svc, err := redisservice.New(redisservice.Options{URL: "redis://localhost:6379", KeyPrefix: "pos:"})
//	ok, err := svc.Set(ctx, "greeting", "hello", redisservice.WithTTL(time.Minute))
package redisservice
