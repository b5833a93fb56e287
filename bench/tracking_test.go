package bench

// The tracking-mode comparison behind the local tier's choice
// (internal/localtier/tracker.go): raw go-redis clients only, so that it
// measures Redis and go-redis, not this library. Run with bench/run:
//
//	OUT=tracking-modes BENCH='Tracking' BENCH_TESTS=0 BENCHTIME=2000x bench/run

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/push"
	"github.com/stretchr/testify/require"
)

const trackPrefix = "bench:track:"

// trackOptions returns options for one dedicated connection to the bench
// server with the RESP version proto; onConnect runs on every connection.
func trackOptions(tb testing.TB, proto int, onConnect func(context.Context, *redis.Conn) error) *redis.Options {
	tb.Helper()
	o, err := redis.ParseURL(benchURL(tb))
	require.NoError(tb, err)
	o.Protocol = proto
	o.PoolSize, o.MinIdleConns, o.MaxIdleConns = 1, 0, 1
	o.OnConnect = onConnect
	return o
}

// invalidations receives the invalidations of one subscriber and counts
// the keys they name. A test waits on got for the key it wrote.
type invalidations struct {
	keys atomic.Int64
	msgs atomic.Int64
	got  chan string // every key named, dropped when nobody waits
}

func newInvalidations() *invalidations { return &invalidations{got: make(chan string, 1)} }

func (iv *invalidations) add(keys []string) {
	iv.msgs.Add(1)
	iv.keys.Add(int64(len(keys)))
	for _, k := range keys {
		select {
		case iv.got <- k:
		default:
		}
	}
}

// drain empties got.
func (iv *invalidations) drain() {
	for {
		select {
		case <-iv.got:
		default:
			return
		}
	}
}

// wait returns when key's invalidation arrives, and when.
func (iv *invalidations) wait(tb testing.TB, key string) time.Time {
	deadline := time.After(2 * time.Second)
	for {
		select {
		case k := <-iv.got:
			if k == key {
				return time.Now()
			}
		case <-deadline:
			tb.Fatalf("no invalidation of %q within 2 s", key)
		}
	}
}

// subscriber is one RESP2 connection subscribed to __redis__:invalidate.
// With bcast it tracks itself in BCAST mode on trackPrefix (REDIRECT to
// its own id, as internal/localtier/tracker.go does); otherwise it only
// receives what other connections redirect to it (id).
type subscriber struct {
	id  int64
	inv *invalidations
}

func newSubscriber(tb testing.TB, bcast bool) *subscriber {
	tb.Helper()
	ctx := context.Background()
	sub := &subscriber{inv: newInvalidations()}
	ids := make(chan int64, 1)
	c := redis.NewClient(trackOptions(tb, 2, func(ctx context.Context, cn *redis.Conn) error {
		id, err := cn.ClientID(ctx).Result()
		if err != nil {
			return err
		}
		select {
		case ids <- id: // the first connection's
		default:
		}
		if !bcast {
			return nil
		}
		return cn.Do(ctx, "CLIENT", "TRACKING", "on", "REDIRECT", id, "BCAST", "PREFIX", trackPrefix).Err()
	}))
	ps := c.Subscribe(ctx, "__redis__:invalidate")
	_, err := ps.Receive(ctx) // the subscription
	require.NoError(tb, err)
	sub.id = <-ids
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			m, err := ps.Receive(ctx)
			if err != nil {
				return // closed
			}
			if m, ok := m.(*redis.Message); ok {
				keys := m.PayloadSlice
				if m.Payload != "" {
					keys = append(keys, m.Payload)
				}
				sub.inv.add(keys)
			}
		}
	})
	tb.Cleanup(func() {
		_ = ps.Close()
		wg.Wait()
		_ = c.Close()
	})
	return sub
}

// redirectedReader is a one-connection client that tracks, in default
// mode, the keys it reads, redirecting the invalidations to sub.
func redirectedReader(tb testing.TB, sub *subscriber) *redis.Client {
	tb.Helper()
	c := redis.NewClient(trackOptions(tb, 2, func(ctx context.Context, cn *redis.Conn) error {
		return cn.Do(ctx, "CLIENT", "TRACKING", "on", "REDIRECT", sub.id).Err()
	}))
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// pushHandler counts RESP3 invalidation pushes.
type pushHandler struct{ inv *invalidations }

func (h pushHandler) HandlePushNotification(_ context.Context, _ push.NotificationHandlerContext, n []any) error {
	if len(n) < 2 {
		return nil // a null invalidation (FLUSHALL)
	}
	ks, _ := n[1].([]any)
	keys := make([]string, 0, len(ks))
	for _, k := range ks {
		if s, ok := k.(string); ok {
			keys = append(keys, s)
		}
	}
	h.inv.add(keys)
	return nil
}

// pushReader is a one-connection RESP3 client that tracks, in default
// mode, the keys it reads; go-redis hands it the pushes when the
// connection is next used.
func pushReader(tb testing.TB) (*redis.Client, *invalidations) {
	tb.Helper()
	c := redis.NewClient(trackOptions(tb, 3, func(ctx context.Context, cn *redis.Conn) error {
		return cn.Do(ctx, "CLIENT", "TRACKING", "on").Err()
	}))
	inv := newInvalidations()
	require.NoError(tb, c.RegisterPushNotificationHandler("invalidate", pushHandler{inv}, false))
	tb.Cleanup(func() { _ = c.Close() })
	return c, inv
}

// BenchmarkTrackingLatency measures the time from just before another
// client sends a SET of a key until the invalidation of that key reaches
// the Go code of a reader that read the key, per tracking mode. Each
// iteration: the reader GETs the key (default mode tracks it), the writer
// SETs it, the invalidation is awaited. It reports p50 and p99.
//
//   - bcast-redirect: a RESP2 connection subscribed to
//     __redis__:invalidate with CLIENT TRACKING ON REDIRECT <itself>
//     BCAST PREFIX (the local tier's setup).
//   - default-redirect: the reading connection has CLIENT TRACKING ON
//     REDIRECT <subscriber> (default mode); a RESP2 subscriber receives.
//   - resp3-push-busy: the reading RESP3 connection receives the push
//     itself; another goroutine keeps that connection busy with GETs of
//     another key, so go-redis reads the push with their replies.
//   - resp3-push-idle-5ms: as above, but the connection is used only every
//     5 ms (a PING), as on a quiet service: go-redis reads pushes only
//     when the connection is next used.
func BenchmarkTrackingLatency(b *testing.B) {
	ctx := context.Background()
	writer := redis.NewClient(trackOptions(b, 2, nil))
	b.Cleanup(func() { _ = writer.Close() })
	key := trackPrefix + "lat"

	run := func(b *testing.B, reader *redis.Client, inv *invalidations) {
		lat := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for i := range b.N {
			if err := reader.Get(ctx, key).Err(); err != nil && err != redis.Nil {
				b.Fatal(err)
			}
			inv.drain()
			start := time.Now()
			if err := writer.Set(ctx, key, i, 0).Err(); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, inv.wait(b, key).Sub(start))
		}
		b.StopTimer()
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
	}

	b.Run("mode=bcast-redirect", func(b *testing.B) {
		sub := newSubscriber(b, true)
		reader := redis.NewClient(trackOptions(b, 2, nil)) // reads untracked: BCAST needs nothing of it
		b.Cleanup(func() { _ = reader.Close() })
		run(b, reader, sub.inv)
	})
	b.Run("mode=default-redirect", func(b *testing.B) {
		sub := newSubscriber(b, false)
		run(b, redirectedReader(b, sub), sub.inv)
	})
	busy := func(b *testing.B, reader *redis.Client, every time.Duration) {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() {
			var tick <-chan time.Time
			if every > 0 {
				t := time.NewTicker(every)
				defer t.Stop()
				tick = t.C
			}
			for {
				select {
				case <-stop:
					return
				default:
				}
				if tick != nil {
					select {
					case <-stop:
						return
					case <-tick:
					}
					_ = reader.Ping(ctx).Err()
					continue
				}
				_ = reader.Get(ctx, trackPrefix+"other").Err()
			}
		})
		b.Cleanup(func() { close(stop); wg.Wait() })
	}
	b.Run("mode=resp3-push-busy", func(b *testing.B) {
		reader, inv := pushReader(b)
		busy(b, reader, 0)
		run(b, reader, inv)
	})
	b.Run("mode=resp3-push-idle-5ms", func(b *testing.B) {
		reader, inv := pushReader(b)
		busy(b, reader, 5*time.Millisecond)
		run(b, reader, inv)
	})
}

// BenchmarkTrackingSetCost measures what tracking costs the server on
// writes: one writer SETs b.N distinct keys under trackPrefix, one round
// trip each (pipe=1) or 100 per round trip (pipe=100: with 0 and 32
// trackers), while n Services track them. sec/op is the writer's time per
// SET; srv-µs/SET is the server's CPU (user+sys, INFO cpu) per SET, which
// includes sending the invalidations (BCAST sends them after the command,
// so INFO commandstats alone would miss them); cmd-µs/SET is
// commandstats' usec_per_call of SET; keys/write/sub and msgs/write/sub
// are the invalidated keys and the messages (one may name several keys)
// each subscriber received per write.
//
//   - bcast: n subscribers as in the local tier, BCAST on the prefix; they
//     read nothing.
//   - default: n readers in default mode, each with its own RESP2
//     subscriber (REDIRECT), that GET every key before the timer starts:
//     every write invalidates a key each of them holds.
//   - default-10pct: as default, but each reader has read one key in ten.
func BenchmarkTrackingSetCost(b *testing.B) {
	writer := redis.NewClient(trackOptions(b, 2, nil))
	b.Cleanup(func() { _ = writer.Close() })
	admin := redis.NewClient(trackOptions(b, 2, nil))
	b.Cleanup(func() { _ = admin.Close() })
	var round atomic.Int64
	for _, pipe := range []int{1, 100} {
		for _, mode := range []string{"bcast", "default", "default-10pct"} {
			for _, n := range []int{0, 1, 8, 32} {
				switch {
				case n == 0 && mode != "bcast":
					continue // one baseline
				case pipe > 1 && n != 0 && n != 32:
					continue
				}
				name := fmt.Sprintf("mode=%s/subs=%d/pipe=%d", mode, n, pipe)
				if n == 0 {
					name = fmt.Sprintf("mode=none/subs=0/pipe=%d", pipe)
				}
				b.Run(name, func(b *testing.B) { setCost(b, writer, admin, round.Add(1), mode, n, pipe) })
			}
		}
	}
}

// setCost is one case of BenchmarkTrackingSetCost: n trackers in mode,
// the writer sending pipe SETs per round trip; r makes the keys new.
func setCost(b *testing.B, writer, admin *redis.Client, r int64, mode string, n, pipe int) {
	ctx := context.Background()
	keys := make([]string, b.N)
	for i := range keys {
		keys[i] = fmt.Sprintf("%s%d:%d", trackPrefix, r, i)
	}
	subs := make([]*subscriber, n)
	for j := range subs {
		subs[j] = newSubscriber(b, mode == "bcast")
		if mode == "bcast" {
			continue
		}
		reader := redirectedReader(b, subs[j])
		p := reader.Pipeline()
		for i, k := range keys {
			if mode == "default" || i%10 == 0 {
				p.Get(ctx, k)
			}
			if p.Len() == 1000 {
				_, _ = p.Exec(ctx) // redis.Nil for each: the keys do not exist yet
			}
		}
		_, _ = p.Exec(ctx)
	}
	require.NoError(b, admin.ConfigResetStat(ctx).Err())
	cpu0 := serverCPU(b, admin)
	b.ResetTimer()
	for ks := range slices.Chunk(keys, pipe) {
		if len(ks) == 1 {
			if err := writer.Set(ctx, ks[0], "v", time.Minute).Err(); err != nil {
				b.Fatal(err)
			}
			continue
		}
		if _, err := writer.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, k := range ks {
				p.Set(ctx, k, "v", time.Minute)
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	// Let the last invalidations arrive.
	want := int64(b.N)
	if mode == "default-10pct" {
		want = int64((b.N + 9) / 10)
	}
	total := func() (keys, msgs int64) {
		for _, s := range subs {
			keys += s.inv.keys.Load()
			msgs += s.inv.msgs.Load()
		}
		return keys, msgs
	}
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if k, _ := total(); k >= want*int64(n) {
			break
		}
	}
	cpu := serverCPU(b, admin) - cpu0
	b.ReportMetric(cpu.Seconds()*1e6/float64(b.N), "srv-µs/SET")
	b.ReportMetric(setUsecPerCall(b, admin), "cmd-µs/SET")
	if n > 0 {
		k, m := total()
		b.ReportMetric(float64(k)/float64(n)/float64(b.N), "keys/write/sub")
		b.ReportMetric(float64(m)/float64(n)/float64(b.N), "msgs/write/sub")
	}
	p := writer.Pipeline()
	for _, k := range keys {
		p.Unlink(ctx, k)
		if p.Len() == 1000 {
			_, _ = p.Exec(ctx)
		}
	}
	_, _ = p.Exec(ctx)
}

// serverCPU returns the server's used_cpu_user + used_cpu_sys.
func serverCPU(tb testing.TB, c *redis.Client) time.Duration {
	tb.Helper()
	info, err := c.Info(context.Background(), "cpu").Result()
	require.NoError(tb, err)
	var sum float64
	for line := range strings.SplitSeq(info, "\r\n") {
		for _, f := range []string{"used_cpu_user:", "used_cpu_sys:"} {
			if v, ok := strings.CutPrefix(line, f); ok {
				x, err := strconv.ParseFloat(v, 64)
				require.NoError(tb, err)
				sum += x
			}
		}
	}
	return time.Duration(sum * float64(time.Second))
}

// setUsecPerCall returns INFO commandstats' usec_per_call of SET.
func setUsecPerCall(tb testing.TB, c *redis.Client) float64 {
	tb.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	require.NoError(tb, err)
	for line := range strings.SplitSeq(info, "\r\n") {
		rest, ok := strings.CutPrefix(line, "cmdstat_set:")
		if !ok {
			continue
		}
		for f := range strings.SplitSeq(rest, ",") {
			if v, ok := strings.CutPrefix(f, "usec_per_call="); ok {
				x, err := strconv.ParseFloat(v, 64)
				require.NoError(tb, err)
				return x
			}
		}
	}
	return 0
}
