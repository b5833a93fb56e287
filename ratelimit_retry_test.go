package redisservice

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The rate-limit script must run at most once per CheckRateLimit, even
// though go-redis retries a command after a read timeout. These tests put
// a proxy between the client and Redis that passes every command on at
// once but holds back the reply to one script call for longer than the
// client's read timeout: the script runs on the server, the client times
// out, and a retry would run it a second time.

const (
	// Generous enough that an ordinary call through the proxy never
	// times out on a loaded 2-core CI machine running the suite with -race.
	stallReadTimeout = 500 * time.Millisecond
	stallFor         = 2500 * time.Millisecond
)

func TestRateLimitScriptIsNotRetriedAfterATimeout(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		t.Parallel()
		type variant struct {
			name    string
			service func(t *testing.T, p *stallProxies) *Service
		}
		var variants []variant
		if b.name == "cluster" {
			for _, always := range []bool{false, true} {
				name := "cluster client"
				if always {
					name += " with AutoPipeline"
				}
				variants = append(variants, variant{name, func(t *testing.T, p *stallProxies) *Service {
					// Every node, including those found through CLUSTER SLOTS,
					// is reached through a proxy.
					cc := redis.NewClusterClient(&redis.ClusterOptions{
						Addrs: strings.Split(os.Getenv(envTestCluster), ","),
						Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
							var d net.Dialer
							return d.DialContext(ctx, network, p.listen(t, addr))
						},
						ReadTimeout:           stallReadTimeout,
						MaxRetries:            5,
						ContextTimeoutEnabled: true,
					})
					t.Cleanup(func() { cc.Close() })
					return newService(t, Options{Client: cc, KeyPrefix: b.prefix, AutoPipeline: always})
				}})
			}
		} else {
			// The Service's own dialled client, with its default retries.
			variants = append(variants, variant{"dialled client", func(t *testing.T, p *stallProxies) *Service {
				return newService(t, Options{URL: stallURL(t, b, p), KeyPrefix: b.prefix, Timeout: stallReadTimeout})
			}})
			variants = append(variants, variant{"dialled with AutoPipeline", func(t *testing.T, p *stallProxies) *Service {
				return newService(t, Options{URL: stallURL(t, b, p), KeyPrefix: b.prefix, Timeout: stallReadTimeout, AutoPipeline: true})
			}})
			if b.real() { // miniredis has no CLIENT TRACKING
				variants = append(variants, variant{"dialled with AutoPipeline and ClientSideCache", func(t *testing.T, p *stallProxies) *Service {
					return newService(t, Options{URL: stallURL(t, b, p), KeyPrefix: b.prefix, Timeout: stallReadTimeout,
						AutoPipeline: true, ClientSideCache: true})
				}})
			}
		}
		for i, v := range variants {
			t.Run(v.name, func(t *testing.T) {
				p := newStallProxies(t)
				checkScriptNotRetried(t, b, p, v.service(t, p), fmt.Sprintf("stalled-%d", i))
			})
		}
	})
}

// warmRateLimitScript loads the rate-limit script and warms s's pool
// without a stall; under load a first dial may be slow, so a warm-up may
// take a few tries.
func warmRateLimitScript(t *testing.T, s *Service) {
	t.Helper()
	for try := 1; ; try++ {
		_, err := s.CheckRateLimit(ctxT(t), "warm", time.Minute, 1000)
		if err == nil {
			return
		}
		require.False(t, try == 5, "CheckRateLimit without a stall: %v", err)
	}
}

// checkScriptNotRetried holds back the reply to one CheckRateLimit of s,
// which talks to b through p, and checks that it counted once.
func checkScriptNotRetried(t *testing.T, b *backend, p *stallProxies, s *Service, id string) {
	t.Helper()
	ctx := ctxT(t)
	warmRateLimitScript(t, s)
	sent := p.scripts.Load()

	p.arm(stallFor)
	// The caller's deadline is far away: only the read timeout fires,
	// which is when go-redis would retry an ordinary command.
	callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	start := time.Now()
	r, err := s.CheckRateLimit(callCtx, id, time.Minute, 10)
	took := time.Since(start)
	require.False(t, err == nil || !isTimeout(err), "CheckRateLimit with the reply held back = %+v, %v; want a timeout error", r, err)
	assert.True(t, r.Allowed, "CheckRateLimit with the reply held back = %+v; want the fail-open result", r)
	assert.False(t, took >= stallFor, "CheckRateLimit took %v; want it to give up at the %v read timeout", took, stallReadTimeout)
	n := p.scripts.Load() - sent
	assert.False(t, n != 1, "script sent %d times for one CheckRateLimit; want 1", n)
	// Sent once, so counted once; or not at all when a starved machine
	// let the read timeout close the connection before the proxy passed
	// the request on. Never twice.
	count, err := b.client.Get(ctx, b.raw("ratelimit:"+id)).Int()
	if errors.Is(err, redis.Nil) {
		count, err = 0, nil
		t.Logf("the held request never reached Redis (a loaded machine): nothing counted")
	}
	require.NoError(t, err, "counter after one timed-out CheckRateLimit")
	assert.LessOrEqual(t, count, 1, "counter after one timed-out CheckRateLimit")

	// The limiter works again, on a fresh connection, as soon as the
	// background PING has seen Redis answer (calls fail fast until then).
	require.Eventually(t, s.IsConnected, waitDeadline, time.Millisecond, "IsConnected after the stall")
	r, err = s.CheckRateLimit(ctx, id, time.Minute, 10)
	assert.False(t, err != nil || r.Remaining != 9-count, "CheckRateLimit after the stall = %+v, %v; want Remaining %d", r, err, 9-count)
}

// TestRateLimitScriptIsNotRetriedOnAStalledServer: on a real server that
// stalls (DEBUG SLEEP), CheckRateLimit fails with a timeout within a few
// read timeouts and its request counts at most once. It is a bound test:
// here go-redis v9.23 does not run a retried script twice behind DEBUG
// SLEEP even with NoRetry off (measured: EVAL called once), so the
// never-twice guarantee itself is proven with the proxy that holds a reply
// back (TestRateLimitScriptIsNotRetriedAfterATimeout,
// TestRateLimitScriptsInABatchRunAtMostOnce; TestStallMakesGoRedisRetry
// shows that proxy provokes the retry).
func TestRateLimitScriptIsNotRetriedOnAStalledServer(t *testing.T) {
	t.Parallel()
	sr := startRedisServer(t)
	ctx := ctxT(t)
	direct := redis.NewClient(&redis.Options{Addr: sr.addr()})
	defer direct.Close()
	// Idle connections ready in the pool, so that a retry would not have
	// to dial; and should one be dialled all the same (a loaded machine),
	// RESP2 without CLIENT SETINFO sends no handshake that would stall:
	// its command is queued behind DEBUG SLEEP like the others.
	c := redis.NewClient(&redis.Options{Addr: sr.addr(), ReadTimeout: stallReadTimeout, MaxRetries: 2,
		MinIdleConns: 4, ContextTimeoutEnabled: true, Protocol: 2, DisableIdentity: true})
	defer c.Close()
	s := newService(t, Options{Client: c})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.CheckRateLimit(ctx, "warm", time.Minute, 10)
			assert.NoError(t, err, "CheckRateLimit before the stall")
		}()
	}
	wg.Wait()

	// A round in which the request never reached Redis before its read
	// timeout (a starved machine) proves nothing either way: a retry, the
	// fault this test is for, would then count once too. Such a round is
	// run again, with a key of its own.
	for round := 1; ; round++ {
		key := "stalled-" + strconv.Itoa(round)
		n := stalledCheckRateLimit(t, s, sr, direct, key)
		require.LessOrEqual(t, n, 1, "counter after one timed-out CheckRateLimit (round %d)", round)
		if n == 1 {
			return
		}
		require.Less(t, round, 3, "in %d rounds the request never reached the stalled server before its read timeout", round)
		t.Logf("round %d: the request never reached Redis before its read timeout (a loaded machine); again", round)
	}
}

// stalledCheckRateLimit stalls sr with DEBUG SLEEP, makes one
// CheckRateLimit of key through s, checks that it fails with a timeout
// within four read timeouts, and returns the counter once the server
// answers again: 1 when the script ran once, 0 when it never reached Redis.
func stalledCheckRateLimit(t *testing.T, s *Service, sr *redisServer, direct *redis.Client, key string) int {
	t.Helper()
	ctx := ctxT(t)
	// The server itself stalls: commands queue up behind DEBUG SLEEP and
	// run when it ends, retries included.
	waitForStall := stallProbe(t, sr.addr())
	slept := make(chan error, 1)
	go func() { slept <- direct.Do(ctx, "DEBUG", "SLEEP", "2.5").Err() }()
	waitForStall()
	callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	start := time.Now()
	r, err := s.CheckRateLimit(callCtx, key, time.Minute, 10)
	// 2s: four read timeouts, and short of the 2.5s that waiting for the
	// server (or retrying behind it) takes.
	took := time.Since(start)
	assert.False(t, err == nil || !isTimeout(err) || took > 4*stallReadTimeout, "CheckRateLimit on a stalled server = %+v, %v after %v; want a timeout error after about %v", r, err, took, stallReadTimeout)
	require.NoError(t, <-slept, "DEBUG SLEEP")
	// Whatever was queued has run once the server answers again.
	require.NoError(t, direct.Ping(ctx).Err())
	n, err := direct.Get(ctx, "ratelimit:"+key).Int()
	if errors.Is(err, redis.Nil) {
		return 0
	}
	require.NoError(t, err, "counter after one timed-out CheckRateLimit")
	return n
}

// TestStallMakesGoRedisRetry shows that the proxy above provokes a retry
// of an ordinary script call, so the test above can fail.
func TestStallMakesGoRedisRetry(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	p := newStallProxies(t)
	c := redis.NewClient(&redis.Options{
		Addr: p.listen(t, b.mr.Addr()), ReadTimeout: stallReadTimeout, MaxRetries: 2, ContextTimeoutEnabled: true,
	})
	defer c.Close()
	ctx := ctxT(t)
	keys := []string{b.raw("ratelimit:plain")}
	require.NoError(t, rateLimitScript.Run(ctx, c, keys, 60000).Err())
	p.arm(stallFor)
	_ = rateLimitScript.Run(ctx, c, keys, 60000).Err()
	n, _ := b.client.Get(ctx, keys[0]).Int()
	assert.False(t, n != 3, "counter after two plain script calls, one retried = %d; want 3", n)
}

// stallURL returns a redis:// URL for b's server through p.
func stallURL(t testing.TB, b *backend, p *stallProxies) string {
	t.Helper()
	if !b.real() {
		return "redis://" + p.listen(t, b.mr.Addr())
	}
	u, err := url.Parse(os.Getenv(envTestURL))
	require.NoError(t, err)
	u.Host = p.listen(t, u.Host)
	return u.String()
}

// stallProxies forwards TCP connections to Redis servers, one listener
// per server, and can hold back the reply to the next script call.
type stallProxies struct {
	armed   atomic.Int64 // nanoseconds to hold back the next script reply; 0: none
	scripts atomic.Int64 // EVAL and EVALSHA commands passed on

	mu      sync.Mutex // guards the fields below
	addrs   map[string]string
	closers []io.Closer
	done    chan struct{}
	wg      sync.WaitGroup
}

func newStallProxies(t testing.TB) *stallProxies {
	t.Helper()
	p := &stallProxies{addrs: map[string]string{}, done: make(chan struct{})}
	t.Cleanup(func() {
		close(p.done)
		p.mu.Lock()
		for _, c := range p.closers {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

// arm holds back the reply to the next script call for d.
func (p *stallProxies) arm(d time.Duration) { p.armed.Store(int64(d)) }

// listen returns the address of the proxy for target, starting it if
// needed.
func (p *stallProxies) listen(t testing.TB, target string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if a, ok := p.addrs[target]; ok {
		return a
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if !assert.NoError(t, err, "proxy listen") {
		return ""
	}

	p.addrs[target] = ln.Addr().String()
	p.closers = append(p.closers, ln)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			down, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				down.Close()
				continue
			}
			p.mu.Lock()
			p.closers = append(p.closers, down, up)
			p.mu.Unlock()
			p.pipe(down, up)
		}
	}()
	return ln.Addr().String()
}

// pipe copies between the client side down and the server side up.
func (p *stallProxies) pipe(down, up net.Conn) {
	var hold atomic.Int64 // delay for the next reply on this connection
	closeBoth := func() { down.Close(); up.Close() }
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		defer closeBoth()
		buf := make([]byte, 64<<10)
		for {
			n, err := down.Read(buf)
			if n > 0 {
				if k := countScripts(buf[:n]); k > 0 {
					p.scripts.Add(int64(k))
					if d := p.armed.Swap(0); d > 0 {
						hold.Store(d) // before the command reaches Redis
					}
				}
				if _, err := up.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	go func() {
		defer p.wg.Done()
		defer closeBoth()
		buf := make([]byte, 64<<10)
		for {
			n, err := up.Read(buf)
			if n > 0 {
				if d := hold.Swap(0); d > 0 {
					select {
					case <-time.After(time.Duration(d)):
					case <-p.done:
						return
					}
				}
				if _, err := down.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
}

// countScripts counts EVAL and EVALSHA commands in RESP bytes.
func countScripts(b []byte) int {
	b = bytes.ToLower(b)
	return bytes.Count(b, []byte("\r\nevalsha\r\n")) + bytes.Count(b, []byte("\r\neval\r\n"))
}
