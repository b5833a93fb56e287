package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
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

const (
	zipfKeys   = 100_000 // keys in Redis, all filled before the run
	zipfS      = 1.1     // Zipf exponent: a few hot keys, a long tail
	zipfDraws  = 1 << 20 // precomputed key draws, cycled through
	zipfPrefix = "bench:zipf:"
)

// BenchmarkCacheZipf reads 100k keys holding ~100-byte values, drawn from
// a Zipf distribution (s=1.1), at 64 callers: through redisservice.Cache
// with the local tier (Options.LocalCacheEntries; impl=service-local, and
// impl=service-local-ap with Options.AutoPipeline too) and through rueidis
// with its client-side cache (DoCache, TTL one minute; impl=rueidis-csc).
// The keys are filled before the run, so a miss of a process-local copy
// is a GET to Redis (Cache's loader, a computed value, runs only for a key
// gone from Redis). fit=all gives both room for every key (100k entries;
// rueidis's default 128 MiB per connection); fit=10pct about a tenth
// (10k entries; 1 MiB per rueidis connection, of which it has four by
// default). miss-% is the share of calls that sent a GET to Redis (INFO
// commandstats), srv-ns/op the server's CPU time per call.
func BenchmarkCacheZipf(b *testing.B) {
	url := benchURL(b)
	ctx := context.Background()
	admin := newRawClient(b, url, nil)
	fillZipfKeys(b, admin)
	draws := zipfDrawKeys()
	for _, fit := range []struct {
		name         string
		entries      int
		rueidisBytes int
	}{
		{"all", zipfKeys, 0},
		{"10pct", zipfKeys / 10, 1 << 20},
	} {
		impls := []struct {
			name string
			get  func() zipfGet
		}{
			{"service-local", func() zipfGet {
				return cacheZipf(b, redisservice.Options{LocalCacheEntries: fit.entries})
			}},
			{"service-local-ap", func() zipfGet {
				return cacheZipf(b, redisservice.Options{LocalCacheEntries: fit.entries, AutoPipeline: true})
			}},
			{"rueidis-csc", func() zipfGet { return rueidisZipf(b, url, fit.rueidisBytes) }},
		}
		for _, impl := range impls {
			b.Run(fmt.Sprintf("fit=%s/callers=64/impl=%s", fit.name, impl.name), func(b *testing.B) {
				get := impl.get()
				var next atomic.Uint64
				g0 := serverGets(b, admin)
				measureServerCPU(b, admin, func() {
					runCallers(b, 64, func(int) error {
						return get(ctx, draws[next.Add(1)%zipfDraws])
					})
				})
				b.ReportMetric(100*float64(serverGets(b, admin)-g0)/float64(b.N), "miss-%")
			})
		}
	}
}

// zipfGet reads one key of the Zipf workload and checks its value.
type zipfGet func(ctx context.Context, key string) error

// zipfValue is the ~100-byte value of key: its JSON text is stored.
func zipfValue(key string) string {
	return key + ":" + strings.Repeat("z", 100-len(key)-1)
}

// cacheZipf reads through redisservice.Cache on a new Service with opts.
func cacheZipf(b *testing.B, opts redisservice.Options) zipfGet {
	b.Helper()
	s := newService(b, opts)
	require.Eventually(b, s.LocalCacheActive, 5*time.Second, time.Millisecond, "the local tier did not come into use")
	return func(ctx context.Context, key string) error {
		v, err := redisservice.Cache(ctx, s, key, time.Minute, func(context.Context) (string, error) {
			return zipfValue(key), nil
		})
		if err == nil && len(v) != 100 {
			err = fmt.Errorf("Cache(%q) = %q; want its 100-byte value", key, v)
		}
		return err
	}
}

// rueidisZipf reads through rueidis's DoCache; cacheBytes > 0 sets
// CacheSizeEachConn.
func rueidisZipf(b *testing.B, url string, cacheBytes int) zipfGet {
	b.Helper()
	opt, err := rueidis.ParseURL(url)
	require.NoError(b, err)
	opt.CacheSizeEachConn = cacheBytes
	c, err := rueidis.NewClient(opt)
	require.NoError(b, err, "rueidis.NewClient")
	b.Cleanup(c.Close)
	return func(ctx context.Context, key string) error {
		v, err := c.DoCache(ctx, c.B().Get().Key(key).Cache(), time.Minute).ToString()
		// The value is stored as JSON: a string in quotes.
		if err == nil && len(v) != 102 {
			err = fmt.Errorf("DoCache GET %q = %q; want its 100-byte value as JSON", key, v)
		}
		return err
	}
}

// fillZipfKeys writes every key of the workload (with a TTL, so that a
// leftover cleans itself) and deletes them at cleanup.
func fillZipfKeys(b *testing.B, admin *redis.Client) {
	b.Helper()
	ctx := context.Background()
	each := func(do func(p redis.Pipeliner, key string)) error {
		p := admin.Pipeline()
		for i := range zipfKeys {
			do(p, zipfPrefix+strconv.Itoa(i))
			if p.Len() == 1000 || i == zipfKeys-1 {
				if _, err := p.Exec(ctx); err != nil {
					return err
				}
			}
		}
		return nil
	}
	require.NoError(b, each(func(p redis.Pipeliner, key string) {
		p.Set(ctx, key, strconv.Quote(zipfValue(key)), 30*time.Minute)
	}), "filling the Zipf keys")
	b.Cleanup(func() { _ = each(func(p redis.Pipeliner, key string) { p.Unlink(ctx, key) }) })
}

// serverGets returns how many GETs the server has run (INFO
// commandstats).
func serverGets(tb testing.TB, admin *redis.Client) int64 {
	tb.Helper()
	info, err := admin.Info(context.Background(), "commandstats").Result()
	require.NoError(tb, err, "INFO commandstats")
	for line := range strings.SplitSeq(info, "\r\n") {
		rest, ok := strings.CutPrefix(line, "cmdstat_get:calls=")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(rest[:strings.IndexByte(rest, ',')], 10, 64)
		require.NoError(tb, err, "INFO commandstats: %s", line)
		return n
	}
	return 0
}

// zipfDrawKeys returns zipfDraws keys drawn from the Zipf distribution,
// with a fixed seed: every impl reads the same sequence.
func zipfDrawKeys() []string {
	z := rand.NewZipf(rand.New(rand.NewPCG(1, 2)), zipfS, 1, zipfKeys-1)
	keys := make([]string, zipfDraws)
	for i := range keys {
		keys[i] = zipfPrefix + strconv.FormatUint(z.Uint64(), 10)
	}
	return keys
}
