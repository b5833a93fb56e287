package redisservice

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// Batch sizes of InvalidatePattern.
const (
	scanCount   = 1000 // COUNT hint of each SCAN
	unlinkBatch = 500  // most keys deleted by one UNLINK (or one pipeline)
)

// InvalidatePattern deletes every key matching pattern and returns how
// many it deleted. [Options.KeyPrefix] is put in front of pattern (its
// glob characters escaped), so pattern matches keys as the caller names
// them: "product:*". The pattern is Redis's glob syntax (* ? [abc] [^a]
// [a-z], \ to escape), sent as it is; use [EscapePattern] on any part of
// it that comes from user input. README "Cache-aside and invalidation"
// says how odd patterns match.
//
// Keys in the namespaces the Service keeps for its own keys (sessions,
// rate limits; see [Options.AllowReservedKeys]) are never deleted unless
// that option is set: a pattern that only they can match ("session:*")
// fails with [ErrInvalidKey], and a wider one ("*") leaves them uncounted.
//
// It walks the keyspace with SCAN MATCH COUNT 1000, the masters of a
// cluster in parallel, and deletes what it finds with UNLINK, at most 500
// keys a command (one pipelined UNLINK per key on a cluster), so it never
// blocks Redis. Each round trip is bounded by [Options.Timeout] when ctx
// has no deadline; the walk as a whole only by ctx. The count is exact: a
// key reported twice, or deleted by another meanwhile, is not counted.
// Keys written during the walk may or may not be deleted.
//
// An empty pattern fails with [ErrInvalidKey]. On error it returns how
// many keys it knows it deleted, a lower bound ("deleted at least 1000
// keys, then: …"): an UNLINK whose reply was lost may still have run.
func (s *Service) InvalidatePattern(ctx context.Context, pattern string) (_ int64, err error) {
	const op = "invalidatepattern"
	ctx, scope := s.tel.Begin(ctx, op, pattern)
	defer scope.End(ctx, &err)
	if pattern == "" {
		return 0, invalid(op, pattern, ErrInvalidKey)
	}
	if lit := literalPrefix(pattern); lit != "" {
		// Every key the pattern matches starts with lit: when lit is
		// reserved, so is every match.
		if err := s.checkWriteKey(lit); err != nil {
			return 0, invalid(op, pattern, err)
		}
	}
	if s.closed.Load() {
		return 0, s.fail(ctx, op, pattern, ErrClosed)
	}
	match := EscapePattern(s.prefix) + pattern
	var deleted atomic.Int64
	err = s.scanEach(ctx, op, pattern, match, scanCount, func(ctx context.Context, _ redis.UniversalClient, keys []string) error {
		if !s.opts.AllowReservedKeys {
			keys = s.unreserved(keys)
		}
		n, err := s.unlink(ctx, op, pattern, keys)
		deleted.Add(n)
		return err
	})
	n := deleted.Load()
	if err == nil {
		return n, nil
	}
	var oe *opError
	if errors.As(err, &oe) {
		err = oe.err // counted and logged already; reworded below
	}
	return n, wrapOp(op, pattern, fmt.Errorf("deleted at least %d keys, then: %w", n, err))
}

// literalPrefix returns the part of pattern before its first glob
// character (* ? [), unescaped: the start of every key it matches.
func literalPrefix(pattern string) string {
	var b strings.Builder
	for i := 0; i < len(pattern); i++ {
		switch c := pattern[i]; c {
		case '*', '?', '[':
			return b.String()
		case '\\':
			if i+1 < len(pattern) {
				i++
			}
			b.WriteByte(pattern[i])
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// unreserved returns keys, given as stored (with the prefix), without
// those in a reserved namespace, reusing keys' array.
func (s *Service) unreserved(keys []string) []string {
	out := keys[:0]
	for _, k := range keys {
		if !reservedKey(strings.TrimPrefix(k, s.prefix)) {
			out = append(out, k)
		}
	}
	return out
}

// unlink deletes keys, given as stored (with the prefix), in batches and
// returns how many existed, counting those of a failed batch too as far as
// they are known.
func (s *Service) unlink(ctx context.Context, op, pattern string, keys []string) (int64, error) {
	var total int64
	for len(keys) > 0 {
		batch := keys[:min(len(keys), unlinkBatch)]
		keys = keys[len(batch):]
		var n int64
		_, err := call(s, ctx, op, pattern, func(ctx context.Context) (struct{}, error) {
			var err error
			n, err = s.deleteKeys(ctx, true, batch) // n survives call's zero value on error
			return struct{}{}, err
		})
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// scanEach walks the keys matching match, as stored (with the prefix), on
// every master: SCAN MATCH match COUNT count, the masters in parallel on
// Redis Cluster. It hands each step's keys, when there are any, to fn
// with the node that holds them; fn runs concurrently for different
// masters. Each SCAN goes through call, so it is bounded by
// Options.Timeout when ctx has no deadline, counted, logged and wrapped
// with op and displayKey; the walk as a whole is bounded only by ctx. The
// walk of a master stops at its first error, and scanEach returns one of
// them. fn's errors must have come through call too: they are returned as
// they are. A failure to find the masters is counted and wrapped here.
func (s *Service) scanEach(ctx context.Context, op, displayKey, match string, count int64,
	fn func(ctx context.Context, node redis.UniversalClient, keys []string) error) error {
	if ctx == nil {
		ctx = context.Background()
	}
	var stepFailed atomic.Bool // the error has been counted and wrapped by call
	err := s.eachMaster(ctx, func(ctx context.Context, node redis.UniversalClient) error {
		var cursor uint64
		for {
			var keys []string
			next, err := call(s, ctx, op, displayKey, func(ctx context.Context) (uint64, error) {
				var err error
				var next uint64
				keys, next, err = node.Scan(ctx, cursor, match, count).Result()
				return next, err
			})
			if err == nil && len(keys) > 0 {
				err = fn(ctx, node, keys)
			}
			if err != nil {
				stepFailed.Store(true)
				return err
			}
			if cursor = next; cursor == 0 {
				return nil
			}
		}
	})
	if err != nil && !stepFailed.Load() {
		err = s.fail(ctx, op, displayKey, err) // finding the masters failed
	}
	return err
}

// EscapePattern returns s with every character that is special in a
// Redis glob pattern (* ? [ ] \) preceded by a backslash, so that the
// result, used as a pattern or part of one, matches s itself and nothing
// else, byte for byte. Use it for user input in a pattern:
//
//	svc.InvalidatePattern(ctx, "search:"+redisservice.EscapePattern(query)+":*")
//
// ^ and - need no escape: they are special only inside [ ], and no [
// survives unescaped.
func EscapePattern(s string) string {
	if !strings.ContainsAny(s, `*?[]\`) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
