package bench

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"github.com/vevurn/redisservice"
)

// stub answers GET and SET in process without touching the network, so
// that BenchmarkOverhead measures only the code around the round trip:
// go-redis's own, and the Service's on top of it.
type stub struct{}

func (stub) DialHook(next redis.DialHook) redis.DialHook { return next }

func (stub) ProcessHook(redis.ProcessHook) redis.ProcessHook {
	return func(_ context.Context, cmd redis.Cmder) error {
		switch c := cmd.(type) {
		case *redis.StringCmd:
			c.SetVal(stubValue(c))
		case *redis.StatusCmd:
			c.SetVal("OK")
		}
		return nil
	}
}

// stubJSON and stubSession are what the stub answers a GET of a key
// starting "json:" or "session:": a JSON string, and a session as
// CreateSession stores it.
var (
	stubJSON    = `"` + value64 + `"`
	stubSession = `{"userId":"u1","email":"a@example.com","role":"user","createdAt":"2026-01-01T00:00:00.000Z",` +
		`"lastActivity":"2026-01-01T00:00:00.000Z","ip":"","userAgent":"","idleTimeoutMs":3600000}`
)

// stubValue is the stub's answer to a GET: value64 but for the keys of
// stubJSON and stubSession.
func stubValue(c *redis.StringCmd) string {
	if a := c.Args(); len(a) == 2 {
		k, _ := a[1].(string)
		switch {
		case strings.HasPrefix(k, "json:"):
			return stubJSON
		case strings.HasPrefix(k, "session:"):
			return stubSession
		}
	}
	return value64
}

func (stub) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// BenchmarkOverhead is the wrapper's own cost per call, without Redis:
// impl=service against impl=raw on the same stubbed client, with a caller
// ctx without a deadline (the Service adds Options.Timeout) and with one.
// It needs no redis-server.
func BenchmarkOverhead(b *testing.B) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", ContextTimeoutEnabled: true})
	rdb.AddHook(stub{})
	b.Cleanup(func() { _ = rdb.Close() })
	s, err := redisservice.New(redisservice.Options{Client: rdb})
	require.NoError(b, err)
	b.Cleanup(func() { _ = s.Close() })
	ops := []struct {
		name     string
		svc, raw func(ctx context.Context) error
	}{
		{"get",
			func(ctx context.Context) error {
				_, found, err := s.Get(ctx, "k")
				if err == nil && !found {
					err = fmt.Errorf("Get: not found")
				}
				return err
			},
			func(ctx context.Context) error { return rdb.Get(ctx, "k").Err() }},
		{"set",
			func(ctx context.Context) error {
				_, err := s.Set(ctx, "k", value64, redisservice.WithTTL(time.Minute))
				return err
			},
			func(ctx context.Context) error { return rdb.Set(ctx, "k", value64, time.Minute).Err() }},
	}
	for _, op := range ops {
		for _, c := range ctxs {
			for _, impl := range []struct {
				name string
				fn   func(ctx context.Context) error
			}{{"raw", op.raw}, {"service", op.svc}} {
				b.Run(fmt.Sprintf("op=%s/ctx=%s/impl=%s", op.name, c.name, impl.name), func(b *testing.B) {
					ctx := c.ctx(b)
					runCallers(b, 1, func(int) error { return impl.fn(ctx) })
				})
			}
		}
	}
}
