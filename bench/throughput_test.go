package bench

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"
	"github.com/stretchr/testify/require"
	"github.com/vevurn/redisservice"
)

// value100 is the 100-byte value of the throughput benchmarks.
var value100 = strings.Repeat("t", 100)

// tpKeys are the keys the Set of BenchmarkThroughput cycles through.
var tpKeys = func() []string {
	k := make([]string, 1024)
	for i := range k {
		k[i] = "bench:tp:set:" + strconv.Itoa(i)
	}
	return k
}()

const tpGetKey = "bench:tp:get"

// tpImpl is one way of sending a GET and a SET.
type tpImpl struct {
	name string
	get  func(ctx context.Context, key string) (string, error)
	set  func(ctx context.Context, key, value string) error
}

// BenchmarkThroughput runs a GET and a SET of a 100-byte value at one and
// at 64 concurrent callers through raw go-redis with default options (the
// baseline), through go-redis's autopipeliner in several configurations,
// through rueidis (auto-pipelined by default) and through the Service, so
// that benchstat -col /impl puts them side by side. Besides ns/op (at 64
// callers: wall time per call, the inverse of throughput) it reports the
// redis-server's CPU time per call (srv-ns/op: the growth of used_cpu_sys
// + used_cpu_user over the run, divided by the calls).
//
// The impls (sub-benchmark impl=...):
//
//	goredis            plain client, default options (PoolSize 10 × GOMAXPROCS)
//	goredis-pool64     plain client, PoolSize 64
//	ap-block           blocking autopipeliner (Client.AutoPipeline), default options
//	ap-block-fd        blocking autopipeliner, FullDuplex
//	ap-async           async autopipeliner: Submit, then AutoFuture.WaitContext
//	ap-async-fd        the same with FullDuplex
//	ap-async-fd-sh2/4  FullDuplex with NumShards 2 and 4 (engines)
//	ap-async-d20/d50   MaxFlushDelay 20µs and 50µs (-ad: with AdaptiveDelay)
//	ap-async-buf512k   Pipeline{Read,Write}BufferSize 512 KiB (default 128 KiB)
//	hybrid-async       a lone call (no other in flight) on the plain client,
//	                   the rest through ap-async
//	rueidis            rueidis.NewClient with its defaults
//	service            Service, default Options: a lone call on the plain
//	                   client, concurrent ones through its autopipeliner
//	service-ap         Service with Options.AutoPipeline: every call
//	                   through the autopipeliner
//	service-off        Service with Options.NoAutoPipeline: every call on
//	                   the plain client
//
// BENCH_TP_IMPLS (a comma-separated list of names) chooses the set; by
// default every impl runs but the flush-delay ones (see dropped).
func BenchmarkThroughput(b *testing.B) {
	url := benchURL(b)
	ctx := context.Background()
	admin := newRawClient(b, url, nil)
	require.NoError(b, admin.Set(ctx, tpGetKey, value100, 0).Err())
	b.Cleanup(func() { _ = admin.Unlink(context.Background(), append([]string{tpGetKey}, tpKeys...)...).Err() })
	impls := throughputImpls(b, url)
	for _, op := range []string{"get", "set"} {
		for _, callers := range []int{1, 64} {
			for _, impl := range impls {
				b.Run(fmt.Sprintf("op=%s/callers=%d/impl=%s", op, callers, impl.name), func(b *testing.B) {
					var fn func(i int) error
					switch op {
					case "get":
						fn = func(int) error {
							v, err := impl.get(ctx, tpGetKey)
							if err == nil && v != value100 {
								err = fmt.Errorf("%s: Get(%q) = %q; want the 100-byte value", impl.name, tpGetKey, v)
							}
							return err
						}
					default:
						fn = func(i int) error { return impl.set(ctx, tpKeys[i%len(tpKeys)], value100) }
					}
					measureServerCPU(b, admin, func() { runCallers(b, callers, fn) })
				})
			}
		}
	}
}

// dropped are the impls BenchmarkThroughput leaves out unless
// BENCH_TP_IMPLS names them: a first run found them clearly slower (a
// flush delay costs a lone caller about a millisecond a call on this
// machine, and gains nothing at 64 callers); see
// results/throughput-first.txt.
var dropped = map[string]bool{
	"ap-async-d20": true, "ap-async-d50": true, "ap-async-d20-ad": true, "ap-async-d50-ad": true,
}

// throughputImpls builds the impls of BenchmarkThroughput but the dropped
// ones, or those named in $BENCH_TP_IMPLS; each client is closed at
// cleanup.
func throughputImpls(b *testing.B, url string) []tpImpl {
	b.Helper()
	want := map[string]bool{}
	for _, n := range strings.Split(os.Getenv("BENCH_TP_IMPLS"), ",") {
		if n = strings.TrimSpace(n); n != "" {
			want[n] = true
		}
	}
	var impls []tpImpl
	add := func(name string, mk func() tpImpl) {
		if len(want) > 0 && !want[name] || len(want) == 0 && dropped[name] {
			return
		}
		impl := mk()
		impl.name = name
		impls = append(impls, impl)
	}
	plain := func(opt func(*redis.Options)) func() tpImpl {
		return func() tpImpl { return clientImpl(newRawClient(b, url, opt)) }
	}
	async := func(ap *redis.AutoPipelineOptions, opt func(*redis.Options)) func() tpImpl {
		return func() tpImpl {
			rdb := newRawClient(b, url, opt)
			p, err := rdb.AsyncAutoPipelineWithOptions(ap)
			require.NoError(b, err, "AsyncAutoPipelineWithOptions(%+v)", ap)
			return asyncImpl(p, nil)
		}
	}
	blocking := func(ap *redis.AutoPipelineOptions) func() tpImpl {
		return func() tpImpl {
			p, err := newRawClient(b, url, nil).AutoPipelineWithOptions(ap)
			require.NoError(b, err, "AutoPipelineWithOptions(%+v)", ap)
			return clientImpl(p)
		}
	}
	asyncOpts := func(edit func(*redis.AutoPipelineOptions)) *redis.AutoPipelineOptions {
		o := redis.DefaultAutoPipelineOptions()
		edit(o)
		return o
	}

	add("goredis", plain(nil))
	add("goredis-pool64", plain(func(o *redis.Options) { o.PoolSize = 64 }))
	add("ap-block", blocking(nil))
	add("ap-block-fd", blocking(func() *redis.AutoPipelineOptions {
		o := redis.DefaultBlockingAutoPipelineOptions()
		o.FullDuplex = true
		return o
	}()))
	add("ap-async", async(nil, nil))
	add("ap-async-fd", async(asyncOpts(func(o *redis.AutoPipelineOptions) { o.FullDuplex = true }), nil))
	add("ap-async-fd-sh2", async(asyncOpts(func(o *redis.AutoPipelineOptions) { o.FullDuplex, o.NumShards = true, 2 }), nil))
	add("ap-async-fd-sh4", async(asyncOpts(func(o *redis.AutoPipelineOptions) { o.FullDuplex, o.NumShards = true, 4 }), nil))
	add("ap-async-d20", async(asyncOpts(func(o *redis.AutoPipelineOptions) { o.MaxFlushDelay = 20 * time.Microsecond }), nil))
	add("ap-async-d50", async(asyncOpts(func(o *redis.AutoPipelineOptions) { o.MaxFlushDelay = 50 * time.Microsecond }), nil))
	add("ap-async-d20-ad", async(asyncOpts(func(o *redis.AutoPipelineOptions) {
		o.MaxFlushDelay, o.AdaptiveDelay = 20*time.Microsecond, true
	}), nil))
	add("ap-async-d50-ad", async(asyncOpts(func(o *redis.AutoPipelineOptions) {
		o.MaxFlushDelay, o.AdaptiveDelay = 50*time.Microsecond, true
	}), nil))
	add("ap-async-buf512k", async(nil, func(o *redis.Options) {
		o.PipelineReadBufferSize, o.PipelineWriteBufferSize = 512<<10, 512<<10
	}))
	add("hybrid-async", func() tpImpl {
		rdb := newRawClient(b, url, nil)
		p, err := rdb.AsyncAutoPipeline()
		require.NoError(b, err)
		return asyncImpl(p, rdb)
	})
	add("rueidis", func() tpImpl {
		opt, err := rueidis.ParseURL(url)
		require.NoError(b, err)
		c, err := rueidis.NewClient(opt)
		require.NoError(b, err, "rueidis.NewClient")
		b.Cleanup(c.Close)
		return tpImpl{
			get: func(ctx context.Context, key string) (string, error) {
				return c.Do(ctx, c.B().Get().Key(key).Build()).ToString()
			},
			set: func(ctx context.Context, key, value string) error {
				return c.Do(ctx, c.B().Set().Key(key).Value(value).Build()).Error()
			},
		}
	})
	add("service", func() tpImpl { return serviceImpl(newService(b, redisservice.Options{})) })
	add("service-ap", func() tpImpl { return serviceImpl(newService(b, redisservice.Options{AutoPipeline: true})) })
	add("service-off", func() tpImpl { return serviceImpl(newService(b, redisservice.Options{NoAutoPipeline: true})) })
	require.NotEmpty(b, impls, "BENCH_TP_IMPLS=%q names no impl", os.Getenv("BENCH_TP_IMPLS"))
	return impls
}

// newRawClient dials url with go-redis, after opt edits the options;
// closed at cleanup.
func newRawClient(tb testing.TB, url string, opt func(*redis.Options)) *redis.Client {
	tb.Helper()
	o, err := redis.ParseURL(url)
	require.NoError(tb, err)
	if opt != nil {
		opt(o)
	}
	rdb := redis.NewClient(o)
	tb.Cleanup(func() { _ = rdb.Close() })
	require.NoError(tb, rdb.Ping(context.Background()).Err(), "PING")
	return rdb
}

// clientImpl sends through a go-redis client or blocking autopipeliner.
func clientImpl(c redis.Cmdable) tpImpl {
	return tpImpl{
		get: func(ctx context.Context, key string) (string, error) { return c.Get(ctx, key).Result() },
		set: func(ctx context.Context, key, value string) error { return c.Set(ctx, key, value, 0).Err() },
	}
}

// asyncImpl submits to the async autopipeliner p and waits with
// WaitContext, so that the caller's ctx bounds the wait. With lone set, a
// call that finds no other call in flight goes to lone instead.
func asyncImpl(p *redis.AutoPipeliner, lone *redis.Client) tpImpl {
	var inflight atomic.Int64
	do := func(ctx context.Context, cmd redis.Cmder) error {
		if lone != nil {
			n := inflight.Add(1)
			defer inflight.Add(-1)
			if n == 1 {
				return lone.Process(ctx, cmd)
			}
		}
		return p.Submit(ctx, cmd).WaitContext(ctx)
	}
	return tpImpl{
		get: func(ctx context.Context, key string) (string, error) {
			cmd := redis.NewStringCmd(ctx, "get", key)
			if err := do(ctx, cmd); err != nil {
				return "", err
			}
			return cmd.Val(), nil
		},
		set: func(ctx context.Context, key, value string) error {
			return do(ctx, redis.NewStatusCmd(ctx, "set", key, value))
		},
	}
}

// serviceImpl sends through s.
func serviceImpl(s *redisservice.Service) tpImpl {
	return tpImpl{
		get: func(ctx context.Context, key string) (string, error) {
			v, found, err := s.Get(ctx, key)
			if err == nil && !found {
				err = fmt.Errorf("Get(%q): not found", key)
			}
			return v, err
		},
		set: func(ctx context.Context, key, value string) error {
			_, err := s.Set(ctx, key, value)
			return err
		},
	}
}

// measureServerCPU runs run and reports the redis-server's CPU time per
// b.N as srv-ns/op, read from INFO cpu (microsecond resolution) on admin.
func measureServerCPU(b *testing.B, admin *redis.Client, run func()) {
	b.Helper()
	before := serverCPU(b, admin)
	run()
	b.StopTimer()
	after := serverCPU(b, admin)
	b.ReportMetric(float64(after-before)/float64(b.N), "srv-ns/op")
}

// BenchmarkLoneCaller measures one caller's Get and Set through an impl
// of BenchmarkThroughput against raw go-redis with default options, in
// pairs: each iteration makes one call through each, in alternating
// order, so that the machine's load, which moves the absolute times of
// separate runs by ±100% on a shared machine, falls on both alike. It
// reports the median time of a call through each (base-ns/call for
// go-redis, impl-ns/call) and their ratio (impl/base).
func BenchmarkLoneCaller(b *testing.B) {
	url := benchURL(b)
	ctx := context.Background()
	admin := newRawClient(b, url, nil)
	require.NoError(b, admin.Set(ctx, tpGetKey, value100, 0).Err())
	b.Cleanup(func() { _ = admin.Unlink(context.Background(), append([]string{tpGetKey}, tpKeys...)...).Err() })
	var base tpImpl
	var impls []tpImpl
	for _, impl := range throughputImpls(b, url) {
		if impl.name == "goredis" {
			base = impl
		} else {
			impls = append(impls, impl)
		}
	}
	require.NotNil(b, base.get, "BENCH_TP_IMPLS must name goredis, the base")
	for _, op := range []string{"get", "set"} {
		for _, impl := range impls {
			b.Run(fmt.Sprintf("op=%s/impl=%s", op, impl.name), func(b *testing.B) {
				call := func(t tpImpl, i int) time.Duration {
					start := time.Now()
					var err error
					if op == "get" {
						var v string
						if v, err = t.get(ctx, tpGetKey); err == nil && v != value100 {
							err = fmt.Errorf("%s: Get(%q) = %q; want the 100-byte value", t.name, tpGetKey, v)
						}
					} else {
						err = t.set(ctx, tpKeys[i%len(tpKeys)], value100)
					}
					d := time.Since(start)
					if err != nil {
						b.Fatal(err)
					}
					return d
				}
				bt := make([]time.Duration, 0, b.N)
				it := make([]time.Duration, 0, b.N)
				b.ResetTimer()
				for i := range b.N {
					if i%2 == 0 {
						bt = append(bt, call(base, i))
						it = append(it, call(impl, i))
					} else {
						it = append(it, call(impl, i))
						bt = append(bt, call(base, i))
					}
				}
				b.StopTimer()
				mb, mi := median(bt), median(it)
				b.ReportMetric(float64(mb.Nanoseconds()), "base-ns/call")
				b.ReportMetric(float64(mi.Nanoseconds()), "impl-ns/call")
				b.ReportMetric(float64(mi)/float64(mb), "impl/base")
			})
		}
	}
}

// median returns the median of d, which it sorts.
func median(d []time.Duration) time.Duration {
	slices.Sort(d)
	return d[len(d)/2]
}
