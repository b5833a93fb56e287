package redisservice

// Test helpers shared by the test files: Services made for one test,
// redis-server processes of a test's own, servers that stall or never
// answer, and small checks on errors and logs.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/vevurn/redisservice/internal/testredis"
)

// redisServer is a redis-server process of one test's own, on a free
// loopback port, so that the test can kill, stall or restart it without
// disturbing any other. It is killed at cleanup.
type redisServer struct {
	t    testing.TB
	bin  string
	port int
	args []string
	dir  string

	mu  sync.Mutex // guards cmd
	cmd *exec.Cmd
}

// startRedisServer starts redis-server on a free loopback port with the
// extra args. It skips the test when redis-server is not installed,
// except under CI, where that is a failure.
func startRedisServer(t testing.TB, args ...string) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		require.False(t, os.Getenv("CI") != "", "redis-server is not installed; .ci/run installs it")
		t.Skip("redis-server is not installed (apt-get install redis-server); skipping a test that needs its own server")
	}
	srv := &redisServer{t: t, bin: bin, port: freePort(t), args: args, dir: t.TempDir()}
	srv.start()
	t.Cleanup(srv.kill)
	return srv
}

func (r *redisServer) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }

func (r *redisServer) url() string { return "redis://" + r.addr() }

// start runs the server and waits until it accepts connections.
func (r *redisServer) start() {
	r.t.Helper()
	port := strconv.Itoa(r.port)
	args := []string{"--port", port, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", r.dir, "--enable-debug-command", "local"}
	for _, a := range r.args {
		if a == "PORT" { // a later --port or --tls-port takes the server's port
			a = port
		}
		args = append(args, a)
	}
	cmd := exec.Command(r.bin, args...)
	require.NoError(r.t, cmd.Start(), "redis-server")
	r.mu.Lock()
	r.cmd = cmd
	r.mu.Unlock()
	deadline := time.Now().Add(waitDeadline)
	for {
		c, err := net.DialTimeout("tcp", r.addr(), 100*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		require.False(r.t, time.Now().After(deadline), "redis-server did not listen on %s", r.addr())
		time.Sleep(10 * time.Millisecond)
	}
}

// restart kills the server and starts it again on the same port, with
// an empty dataset.
func (r *redisServer) restart() {
	r.t.Helper()
	r.kill()
	r.start()
}

// kill stops the server at once (SIGKILL), as a crash would.
func (r *redisServer) kill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
	r.cmd = nil
}

// freePort returns a loopback port that was free a moment ago, and whose
// cluster bus port (+10000) was free too. Both lie below the kernel's
// ephemeral range, so that no outgoing connection takes one before the
// server binds it.
func freePort(t testing.TB) int {
	t.Helper()
	heldLogs.ShowOnFailure(t)
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 21000+10000 {
				low = n
			}
		}
	}
	for range 1000 {
		p := 11000 + rand.IntN(low-10000-11000)
		if listenable(p) && listenable(p+10000) {
			return p
		}
	}
	require.FailNow(t, "no free loopback port")
	return 0
}

func listenable(port int) bool {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// pause stops the server's process (SIGSTOP): it keeps its connections
// and its port but answers nothing, as a hung host would. resume undoes it.
func (r *redisServer) pause() { r.signal(syscall.SIGSTOP) }

func (r *redisServer) resume() { r.signal(syscall.SIGCONT) }

func (r *redisServer) signal(sig syscall.Signal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil {
		_ = r.cmd.Process.Signal(sig)
	}
}

// waitDeadline is how long waitFor polls: long enough that only a
// condition that never comes true fails, however loaded the machine.
const waitDeadline = testredis.WaitDeadline

// waitFor polls cond until it holds, and fails the test when it still
// does not after waitDeadline (testredis.WaitFor).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testredis.WaitFor(t, what, cond)
}

// within fails the test when fn takes longer than d.
func within(t testing.TB, d time.Duration, what string, fn func()) {
	t.Helper()
	start := time.Now()
	fn()
	took := time.Since(start)
	assert.False(t, took > d, "%s took %v; want at most %v", what, took, d)
}

// stall makes srv sleep for d in DEBUG SLEEP, from a connection of its
// own, and returns once the server is busy. The command is written before
// the probe starts, so that a probe slowed down by a loaded machine cannot
// take the server for stalled before it was asked to.
func stall(t testing.TB, srv *redisServer, d time.Duration) {
	t.Helper()
	stalled := stallProbe(t, srv.addr())
	c, err := net.Dial("tcp", srv.addr())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	secs := strconv.FormatFloat(d.Seconds(), 'f', 3, 64)
	_, err = fmt.Fprintf(c, "*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n$%d\r\n%s\r\n", len(secs), secs)
	require.NoError(t, err)
	stalled()
}

// stalledServer accepts connections and never answers.
func stalledServer(t testing.TB) string {
	t.Helper()
	heldLogs.ShowOnFailure(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return ln.Addr().String()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// syncWriter serialises writes from concurrent loggers.
type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.String()
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t testing.TB) string {
	t.Helper()
	heldLogs.ShowOnFailure(t)
	return testredis.ClosedAddr(t)
}

// newService returns a Service made with opts, closed at cleanup.
func newService(t testing.TB, opts Options) *Service {
	t.Helper()
	heldLogs.ShowOnFailure(t)
	s, err := New(opts)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

// stallProbe returns a function that returns once the server at addr
// no longer answers a PING: not within 30ms, nor then within 300ms (one
// late reply on a loaded machine says little). Call stallProbe before the
// stall begins: it dials then.
func stallProbe(t testing.TB, addr string) func() {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, ContextTimeoutEnabled: true})
	t.Cleanup(func() { c.Close() })
	require.NoError(t, c.Ping(context.Background()).Err())
	ping := func(d time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		return c.Ping(ctx).Err()
	}
	return func() {
		t.Helper()
		deadline := time.Now().Add(waitDeadline)
		for time.Now().Before(deadline) {
			if ping(30*time.Millisecond) != nil && ping(300*time.Millisecond) != nil {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		require.FailNow(t, fmt.Sprintf("server %s never stalled", addr))
	}
}

// dialled returns a Service that dials url itself with opts, closed at
// cleanup.
func dialled(t testing.TB, url string, opts Options) *Service {
	t.Helper()
	opts.URL = url
	return newService(t, opts)
}
