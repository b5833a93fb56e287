package bench

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/vevurn/redisservice"
)

// BenchmarkDefaultPath compares, for Get and Set of a 100-byte value at 1
// and 64 callers: raw go-redis (impl=raw, the plain client a Service
// dials), a Service with the default options (impl=default: a lone call
// on the plain client, concurrent ones through the autopipeliner), one
// with every call through the autopipeliner (impl=always,
// Options.AutoPipeline) and one without it (impl=off,
// Options.NoAutoPipeline). ns/op is wall time over all callers' calls.
//
//	BENCH=DefaultPath bench/run
func BenchmarkDefaultPath(b *testing.B) {
	value := strings.Repeat("v", 100)
	impls := []struct {
		name string
		s    *redisservice.Service
	}{
		{"default", newService(b, redisservice.Options{})},
		{"always", newService(b, redisservice.Options{AutoPipeline: true})},
		{"off", newService(b, redisservice.Options{NoAutoPipeline: true})},
	}
	rdb := impls[2].s.Client()
	ctx := context.Background()
	require.NoError(b, rdb.Set(ctx, "bench:dp", value, 0).Err())
	type op struct {
		svc func(s *redisservice.Service, i int) error
		raw func(i int) error
	}
	ops := []struct {
		name string
		op
	}{
		{"get", op{
			svc: func(s *redisservice.Service, _ int) error {
				_, found, err := s.Get(ctx, "bench:dp")
				if err == nil && !found {
					err = fmt.Errorf("Get: not found")
				}
				return err
			},
			raw: func(int) error { return rdb.Get(ctx, "bench:dp").Err() },
		}},
		{"set", op{
			svc: func(s *redisservice.Service, i int) error {
				_, err := s.Set(ctx, fmt.Sprintf("bench:dp:%d", i%1024), value, redisservice.WithTTL(time.Minute))
				return err
			},
			raw: func(i int) error {
				return rdb.Set(ctx, fmt.Sprintf("bench:dp:%d", i%1024), value, time.Minute).Err()
			},
		}},
	}
	for _, o := range ops {
		for _, callers := range []int{1, 64} {
			b.Run(fmt.Sprintf("op=%s/callers=%d/impl=raw", o.name, callers), func(b *testing.B) {
				runCallers(b, callers, o.raw)
			})
			for _, impl := range impls {
				b.Run(fmt.Sprintf("op=%s/callers=%d/impl=%s", o.name, callers, impl.name), func(b *testing.B) {
					runCallers(b, callers, func(i int) error { return o.svc(impl.s, i) })
				})
			}
		}
	}
}
