package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/vevurn/redisservice"
)

// doc is the ~1 KB struct of the JSON benchmarks.
type doc struct {
	ID       string            `json:"id"`
	Name     string            `json:"name"`
	Email    string            `json:"email"`
	Tags     []string          `json:"tags"`
	Scores   []float64         `json:"scores"`
	Attrs    map[string]string `json:"attrs"`
	Created  time.Time         `json:"created"`
	Active   bool              `json:"active"`
	Comments string            `json:"comments"`
}

func newDoc() doc {
	d := doc{
		ID: "6f1c2a9e-1d2b-4c55-9a3e-8b7f0e2d4c11", Name: "Ada Lovelace", Email: "ada@example.com",
		Tags:     []string{"admin", "beta", "eu-west", "mobile", "newsletter"},
		Scores:   []float64{0.5, 1.25, 3.75, 9.5, 12, 99.125},
		Attrs:    map[string]string{},
		Created:  time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC),
		Active:   true,
		Comments: strings.Repeat("lorem ipsum ", 40),
	}
	for i := range 12 {
		d.Attrs[fmt.Sprintf("attr%02d", i)] = fmt.Sprintf("value-%02d-xxxxxxxx", i)
	}
	return d
}

// ctxs are the two kinds of caller context: without a deadline the
// Service adds its own (Options.Timeout); with one it uses it as it is.
var ctxs = []struct {
	name string
	ctx  func(b *testing.B) context.Context
}{
	{"bg", func(*testing.B) context.Context { return context.Background() }},
	{"deadline", func(b *testing.B) context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		b.Cleanup(cancel)
		return ctx
	}},
}

// pair runs the Service form and the raw go-redis form of one operation
// at every caller count, as impl=service and impl=raw, so that benchstat
// -col /impl puts them side by side.
func pair(b *testing.B, ctxName string, svc, raw func(ctx context.Context, i int) error) {
	for _, c := range ctxs {
		if ctxName != "" && c.name != ctxName {
			continue
		}
		for _, callers := range callerCounts {
			for _, impl := range []struct {
				name string
				op   func(ctx context.Context, i int) error
			}{{"raw", raw}, {"service", svc}} {
				name := fmt.Sprintf("ctx=%s/callers=%d/impl=%s", c.name, callers, impl.name)
				b.Run(name, func(b *testing.B) {
					ctx := c.ctx(b)
					runCallers(b, callers, func(i int) error { return impl.op(ctx, i) })
				})
			}
		}
	}
}

func BenchmarkGet(b *testing.B) {
	s := newService(b, redisservice.Options{})
	rdb := s.Client()
	require.NoError(b, rdb.Set(context.Background(), "bench:get", value64, 0).Err())
	pair(b, "",
		func(ctx context.Context, _ int) error {
			_, found, err := s.Get(ctx, "bench:get")
			if err == nil && !found {
				err = fmt.Errorf("Get: not found")
			}
			return err
		},
		func(ctx context.Context, _ int) error {
			return rdb.Get(ctx, "bench:get").Err()
		})
}

func BenchmarkSet(b *testing.B) {
	s := newService(b, redisservice.Options{})
	rdb := s.Client()
	pair(b, "",
		func(ctx context.Context, _ int) error {
			_, err := s.Set(ctx, "bench:set", value64, redisservice.WithTTL(time.Minute))
			return err
		},
		func(ctx context.Context, _ int) error {
			return rdb.Set(ctx, "bench:set", value64, time.Minute).Err()
		})
}

func BenchmarkSetJSON(b *testing.B) {
	s := newService(b, redisservice.Options{})
	rdb := s.Client()
	d := newDoc()
	raw, _ := json.Marshal(d)
	require.True(b, len(raw) >= 900 && len(raw) <= 1300, "doc is %d bytes of JSON; want about 1 KB", len(raw))
	pair(b, "bg",
		func(ctx context.Context, _ int) error {
			_, err := s.SetJSON(ctx, "bench:json", d, redisservice.WithTTL(time.Minute))
			return err
		},
		func(ctx context.Context, _ int) error {
			raw, err := json.Marshal(d)
			if err != nil {
				return err
			}
			return rdb.Set(ctx, "bench:json", raw, time.Minute).Err()
		})
}

func BenchmarkGetJSON(b *testing.B) {
	s := newService(b, redisservice.Options{})
	rdb := s.Client()
	_, err := s.SetJSON(context.Background(), "bench:json:get", newDoc())
	require.NoError(b, err)
	pair(b, "bg",
		func(ctx context.Context, _ int) error {
			var d doc
			found, err := s.GetJSON(ctx, "bench:json:get", &d)
			if err == nil && !found {
				err = fmt.Errorf("GetJSON: not found")
			}
			return err
		},
		func(ctx context.Context, _ int) error {
			raw, err := rdb.Get(ctx, "bench:json:get").Bytes()
			if err != nil {
				return err
			}
			var d doc
			return json.Unmarshal(raw, &d)
		})
}

func BenchmarkHGetAll(b *testing.B) {
	s := newService(b, redisservice.Options{})
	rdb := s.Client()
	fields := make([]any, 0, 20)
	for i := range 10 {
		fields = append(fields, fmt.Sprintf("field%02d", i), strings.Repeat("x", 16))
	}
	require.NoError(b, rdb.HSet(context.Background(), "bench:hash", fields...).Err())
	pair(b, "bg",
		func(ctx context.Context, _ int) error {
			m, err := s.HGetAll(ctx, "bench:hash")
			if err == nil && len(m) != 10 {
				err = fmt.Errorf("HGetAll: %d fields; want 10", len(m))
			}
			return err
		},
		func(ctx context.Context, _ int) error {
			return rdb.HGetAll(ctx, "bench:hash").Err()
		})
}

// BenchmarkMSet writes 10k keys with a TTL: the Service's MSet (one
// pipeline) against a SET per key. It reports round trips per batch.
func BenchmarkMSet(b *testing.B) {
	const n = 10000
	s := newService(b, redisservice.Options{})
	rdb := s.Client()
	rt := &roundTrips{}
	rdb.AddHook(rt)
	values := make(map[string]any, n)
	keys := make([]string, 0, n)
	for i := range n {
		k := fmt.Sprintf("bench:mset:%05d", i)
		values[k], keys = value64, append(keys, k)
	}
	ctx := context.Background()
	b.Run("impl=service", func(b *testing.B) {
		b.ReportAllocs()
		rt.n.Store(0)
		b.ResetTimer()
		for range b.N {
			if err := s.MSet(ctx, values, redisservice.WithTTL(time.Minute)); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(rt.n.Load())/float64(b.N), "roundtrips/op")
	})
	b.Run("impl=set-loop", func(b *testing.B) {
		b.ReportAllocs()
		rt.n.Store(0)
		b.ResetTimer()
		for range b.N {
			for _, k := range keys {
				if err := rdb.Set(ctx, k, value64, time.Minute).Err(); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(rt.n.Load())/float64(b.N), "roundtrips/op")
	})
	b.StopTimer()
	require.NoError(b, rdb.Del(ctx, keys...).Err())
}
