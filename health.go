package redisservice

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// HealthCheck reports whether Redis answers a PING within the call's
// bound: nil when it does. On Redis Cluster it pings every master.
func (s *Service) HealthCheck(ctx context.Context) error {
	return s.ping(ctx, "healthcheck")
}

// ping PINGs Redis (every master of a cluster), also while calls fail
// fast: an explicit check always asks.
func (s *Service) ping(ctx context.Context, op string) (err error) {
	ctx, scope := s.tel.Begin(ctx, op, "")
	defer scope.End(ctx, &err)
	_, err = try(s, ctx, op, "", func(ctx context.Context) (struct{}, error) {
		return struct{}{}, s.pingAll(ctx)
	})
	return err
}

// pingAll PINGs every master of a cluster, or the one node.
func (s *Service) pingAll(ctx context.Context) error {
	return s.eachMaster(ctx, func(ctx context.Context, n redis.UniversalClient) error {
		return n.Ping(ctx).Err()
	})
}

// HealthReport is the JSON body written by [Service.HealthHandler]. It
// never says why a check failed: that goes to [Options.Logger].
type HealthReport struct {
	Status    string  `json:"status"`    // "ok" or "unavailable"
	LatencyMS float64 `json:"latencyMs"` // time the health check took, in milliseconds
}

// HealthHandler returns an [http.Handler] for liveness and readiness
// probes. It runs [Service.HealthCheck] bounded by the request's context
// and answers 200 with {"status":"ok","latencyMs":…} or 503 with
// {"status":"unavailable","latencyMs":…}, with Content-Type
// application/json and Cache-Control no-store. The body carries nothing
// else: the cause of a failure (addresses, the server's reply) is for the
// operator, and is logged through [Options.Logger] like every failed call,
// at most about once a second.
func (s *Service) HealthHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		err := s.HealthCheck(r.Context())
		rep := HealthReport{Status: "ok", LatencyMS: float64(time.Since(start).Microseconds()) / 1000}
		code := http.StatusOK
		if err != nil {
			rep.Status, code = "unavailable", http.StatusServiceUnavailable
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(rep)
	})
}

// Info returns the fields of the INFO reply for the given sections (all
// default sections when none are named) as a map from field to value,
// e.g. "redis_version" -> "7.0.15". On Redis Cluster it is the INFO of
// one node. The map is never nil: it is empty on error.
func (s *Service) Info(ctx context.Context, sections ...string) (map[string]string, error) {
	txt, err := call(s, ctx, "info", strings.Join(sections, ","), func(ctx context.Context) (string, error) {
		return s.rdb.Info(ctx, sections...).Result()
	})
	if err != nil {
		return map[string]string{}, err
	}
	return parseInfo(txt), nil
}

// parseInfo parses "field:value" lines, skipping "# Section" headers.
func parseInfo(txt string) map[string]string {
	m := make(map[string]string)
	sc := bufio.NewScanner(strings.NewReader(txt))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = v
		}
	}
	return m
}

// FlushAll deletes every key of every database, on every master of a
// cluster, ignoring [Options.KeyPrefix]. It returns [ErrFlushDisabled]
// unless [Options.AllowFlushAll] is set.
func (s *Service) FlushAll(ctx context.Context) error {
	const op = "flushall"
	if !s.opts.AllowFlushAll {
		return invalid(op, "", ErrFlushDisabled)
	}
	_, err := call(s, ctx, op, "", func(ctx context.Context) (struct{}, error) {
		return struct{}{}, s.eachMaster(ctx, func(ctx context.Context, n redis.UniversalClient) error {
			return n.FlushAll(ctx).Err()
		})
	})
	return err
}

// Stats is a snapshot of a Service's counters since New.
type Stats struct {
	// Hits counts the lookups that found what they looked for: Get,
	// GetJSON (a value that then fails to decode too), HGet (the field),
	// HGetAll (a non-empty hash), MGet (per key), Cache (a value, in
	// process or in Redis, or a remembered ErrNotFound) and the reads of a
	// session: GetSession's, and each attempt's of UpdateSession and
	// RenewSessionID. Exists, TTL and the other calls count neither.
	Hits uint64
	// Misses counts the same lookups that found nothing: a missing key or
	// field, an empty hash, a Cache miss (a value that does not decode too).
	Misses uint64

	Errors         uint64 // calls that failed in Redis or on the way to it (a value that does not decode too), or failed fast with ErrUnavailable
	Fallbacks      uint64 // calls answered with their fallback value because Redis could not be used (Errors plus calls after Close)
	LogsSuppressed uint64 // failure log lines held back by the once-a-second limit
	Connected      bool   // what IsConnected reports: the last observed state, read without touching the network
	Pool           PoolStats
}

// PoolStats are the go-redis connection pool's figures (summed over the
// nodes of a cluster). [Service.Client] gives the full [redis.PoolStats].
type PoolStats struct {
	Hits       uint32        // a free connection was found in the pool
	Misses     uint32        // no free connection was found; one was dialled or waited for
	Timeouts   uint32        // waits for a connection that ran out of PoolTimeout
	WaitTime   time.Duration // total time spent waiting for a connection
	TotalConns uint32        // connections open now
	IdleConns  uint32        // idle connections now
	StaleConns uint32        // connections removed as stale
}

// Stats returns a snapshot of the counters and of the go-redis pool. It
// does not touch the network.
func (s *Service) Stats() Stats {
	st := Stats{
		Hits:           s.stats.hits.Load(),
		Misses:         s.stats.misses.Load(),
		Errors:         s.stats.errors.Load(),
		Fallbacks:      s.stats.fallbacks.Load(),
		LogsSuppressed: s.stats.logsSuppressed.Load(),
		Connected:      s.breaker.Connected(),
	}
	if ps := s.rdb.PoolStats(); ps != nil {
		st.Pool = PoolStats{
			Hits:       ps.Hits,
			Misses:     ps.Misses,
			Timeouts:   ps.Timeouts,
			WaitTime:   time.Duration(ps.WaitDurationNs),
			TotalConns: ps.TotalConns,
			IdleConns:  ps.IdleConns,
			StaleConns: ps.StaleConns,
		}
	}
	return st
}
