package scsstore_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/alexedwards/scs/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vevurn/redisservice"
	"github.com/vevurn/redisservice/internal/testredis"
	"github.com/vevurn/redisservice/scsstore"
)

// backend is one Redis a test runs on (internal/testredis: miniredis
// always, a real redis-server and a real Redis Cluster when their
// variables are set), with a Service whose key prefix is the test's own.
type backend struct {
	*testredis.Backend
	svc *redisservice.Service
}

// forEachBackend runs fn as a parallel subtest per backend.
func forEachBackend(t *testing.T, fn func(t *testing.T, b *backend)) {
	t.Helper()
	testredis.ForEach(t, "scstest:", func(t *testing.T, tb *testredis.Backend) {
		t.Parallel()
		fn(t, withService(t, tb))
	})
}

// withService gives tb a Service over its client and prefix, closed at
// cleanup.
func withService(t testing.TB, tb *testredis.Backend) *backend {
	t.Helper()
	svc, err := redisservice.New(redisservice.Options{Client: tb.Client, KeyPrefix: tb.Prefix})
	require.NoError(t, err)
	t.Cleanup(func() { _ = svc.Close() })
	return &backend{Backend: tb, svc: svc}
}

// pttl returns the time to live of the session token as stored.
func (b *backend) pttl(t testing.TB, token string) time.Duration {
	t.Helper()
	d, err := b.Client.PTTL(context.Background(), b.Raw(scsstore.DefaultPrefix+token)).Result()
	require.NoError(t, err)
	return d
}

func ctxT(t testing.TB) context.Context { return testredis.Context(t) }

// TestLoadAndSave runs scs's own middleware on the store: a counter kept in
// the session survives between requests of one client, its cookie's token
// names the key, and a second client gets a session of its own.
func TestLoadAndSave(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		sm := scs.New()
		sm.Store = scsstore.New(b.svc)
		sm.Lifetime = time.Hour
		mux := http.NewServeMux()
		mux.HandleFunc("/inc", func(w http.ResponseWriter, r *http.Request) {
			n := sm.GetInt(r.Context(), "n") + 1
			sm.Put(r.Context(), "n", n)
			fmt.Fprint(w, n)
		})
		mux.HandleFunc("/logout", func(w http.ResponseWriter, r *http.Request) {
			require.NoError(t, sm.Destroy(r.Context()))
		})
		srv := httptest.NewServer(sm.LoadAndSave(mux))
		t.Cleanup(srv.Close)

		alice, bob := newClient(t), newClient(t)
		for want := 1; want <= 3; want++ {
			assert.Equal(t, fmt.Sprint(want), get(t, alice, srv.URL+"/inc"))
		}
		assert.Equal(t, "1", get(t, bob, srv.URL+"/inc"), "another client's session")

		token := sessionToken(t, alice, srv.URL, sm.Cookie.Name)
		ttl := b.pttl(t, token)
		assert.Greater(t, ttl, 59*time.Minute, "PTTL of the session's key")
		assert.LessOrEqual(t, ttl, time.Hour, "PTTL of the session's key")

		all, err := scsstore.New(b.svc).AllCtx(ctxT(t))
		require.NoError(t, err)
		assert.Len(t, all, 2)
		assert.Contains(t, all, token)

		get(t, alice, srv.URL+"/logout")
		assert.Equal(t, time.Duration(-2), b.pttl(t, token), "the key after Destroy")
		assert.Equal(t, "1", get(t, alice, srv.URL+"/inc"), "a new session after logout")
	})
}

func newClient(t testing.TB) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	return &http.Client{Jar: jar, Timeout: 10 * time.Second}
}

func get(t testing.TB, c *http.Client, url string) string {
	t.Helper()
	resp, err := c.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "GET %s: %s", url, body)
	return string(body)
}

func sessionToken(t testing.TB, c *http.Client, rawURL, name string) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, rawURL, nil)
	require.NoError(t, err)
	for _, ck := range c.Jar.Cookies(req.URL) {
		if ck.Name == name {
			return ck.Value
		}
	}
	require.FailNowf(t, "no session cookie", "no %s cookie", name)
	return ""
}

// TestExpiry: a session lives until its expiry, to the millisecond, and not
// after; an expiry already past deletes it.
func TestExpiry(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		ctx := ctxT(t)
		st := scsstore.New(b.svc)
		// 2s: the reads below come long before it, however loaded the machine.
		require.NoError(t, st.CommitCtx(ctx, "tok", []byte("data"), time.Now().Add(2*time.Second)))
		ttl := b.pttl(t, "tok")
		assert.Greater(t, ttl, time.Second, "PTTL after a commit for 2s")
		assert.LessOrEqual(t, ttl, 2*time.Second, "PTTL after a commit for 2s")
		got, found, err := st.FindCtx(ctx, "tok")
		require.NoError(t, err)
		assert.True(t, found)
		assert.Equal(t, []byte("data"), got)

		b.Pass(2001 * time.Millisecond)
		b.WaitFor(t, "the session expired", func() bool { return b.pttl(t, "tok") == -2 })
		got, found, err = st.FindCtx(ctx, "tok")
		require.NoError(t, err)
		assert.False(t, found, "FindCtx after the expiry")
		assert.Nil(t, got)

		require.NoError(t, st.CommitCtx(ctx, "old", []byte("x"), time.Now().Add(time.Hour)))
		require.NoError(t, st.CommitCtx(ctx, "old", []byte("x"), time.Now().Add(-time.Second)))
		assert.Equal(t, time.Duration(-2), b.pttl(t, "old"), "a commit with a past expiry")
	})
}

// TestExpiryBeyondADuration: an expiry further away than a time.Duration
// reaches still stores the session with a TTL, the longest one a Duration
// holds (about 292 years), never without one.
func TestExpiryBeyondADuration(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		ctx := ctxT(t)
		st := scsstore.New(b.svc)
		for name, expiry := range map[string]time.Time{
			"300 years": time.Now().AddDate(300, 0, 0),
			"year 9999": time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC),
		} {
			require.NoError(t, st.CommitCtx(ctx, name, []byte("x"), expiry), name)
			ttl := b.pttl(t, name)
			assert.Greater(t, ttl, 290*365*24*time.Hour, "PTTL after a commit for %s", name)
		}
	})
}

// TestDelete: Delete removes the session; deleting an unknown or empty
// token is no error; Find of an unknown or empty token is a miss.
func TestDelete(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		st := scsstore.New(b.svc)
		require.NoError(t, st.Commit("tok", []byte("data"), time.Now().Add(time.Minute)))
		_, found, err := st.Find("tok")
		require.NoError(t, err)
		require.True(t, found)

		require.NoError(t, st.Delete("tok"))
		_, found, err = st.Find("tok")
		require.NoError(t, err)
		assert.False(t, found, "Find after Delete")

		assert.NoError(t, st.Delete("tok"), "Delete of an unknown token")
		assert.NoError(t, st.Delete(""), "Delete of the empty token")
		_, found, err = st.Find("")
		assert.NoError(t, err)
		assert.False(t, found, "Find of the empty token")
		assert.ErrorIs(t, st.Commit("", []byte("x"), time.Now().Add(time.Minute)), redisservice.ErrInvalidKey)
	})
}

// TestAll returns exactly the live sessions under the store's prefix, from
// every master of a cluster, and scs's Iterate visits each of them.
func TestAll(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b *backend) {
		ctx := ctxT(t)
		st := scsstore.New(b.svc)
		other := scsstore.NewWithPrefix(b.svc, "other:")

		empty, err := st.AllCtx(ctx)
		require.NoError(t, err)
		assert.NotNil(t, empty)
		assert.Empty(t, empty)

		want := make(map[string][]byte)
		masters := make(map[string]bool)
		for i := range 60 {
			tok := fmt.Sprintf("tok-%d-%s", i, testredis.RandomHex(t, 8))
			// Encoded as scs encodes a session, so that its Iterate can read them.
			data, err := scs.GobCodec{}.Encode(time.Now().Add(time.Minute), map[string]any{"i": i})
			require.NoError(t, err)
			want[tok] = data
			require.NoError(t, st.CommitCtx(ctx, tok, want[tok], time.Now().Add(time.Minute)))
			if c, ok := b.Client.(*redis.ClusterClient); ok {
				n, err := c.MasterForKey(ctx, b.Prefix+scsstore.DefaultPrefix+tok)
				require.NoError(t, err)
				masters[n.Options().Addr] = true
			}
		}
		if b.Name == "cluster" {
			require.Len(t, masters, 3, "the sessions are spread over every master")
		}
		require.NoError(t, other.CommitCtx(ctx, "elsewhere", []byte("x"), time.Now().Add(time.Minute)))
		// A key of the same name outside the Service's prefix is not ours.
		require.NoError(t, b.Client.Set(ctx, scsstore.DefaultPrefix+"foreign", "x", time.Minute).Err())
		t.Cleanup(func() { b.Client.Del(context.Background(), scsstore.DefaultPrefix+"foreign") })

		got, err := st.All()
		require.NoError(t, err)
		assert.Equal(t, want, got)

		sm := scs.New()
		sm.Store = st
		seen := make(map[int]bool)
		require.NoError(t, sm.Iterate(ctx, func(ctx context.Context) error {
			seen[sm.GetInt(ctx, "i")] = true
			return nil
		}))
		assert.Len(t, seen, len(want), "sessions scs's Iterate visited")
	})
}

// TestErrors: a closed Service or an unreachable Redis gives the
// Service's wrapped error, which never contains the token.
func TestErrors(t *testing.T) {
	t.Parallel()
	const token = "secret-token-value"
	t.Run("closed", func(t *testing.T) {
		t.Parallel()
		b := withService(t, testredis.New(t, "miniredis", "scstest:"))
		st := scsstore.New(b.svc)
		require.NoError(t, b.svc.Close())
		_, found, err := st.FindCtx(ctxT(t), token)
		assert.False(t, found)
		require.ErrorIs(t, err, redisservice.ErrClosed)
		assert.NotContains(t, err.Error(), token)
		err = st.CommitCtx(ctxT(t), token, []byte("x"), time.Now().Add(time.Minute))
		require.ErrorIs(t, err, redisservice.ErrClosed)
		assert.NotContains(t, err.Error(), token)
		all, err := st.AllCtx(ctxT(t))
		require.ErrorIs(t, err, redisservice.ErrClosed)
		assert.NotNil(t, all)
	})
	t.Run("unreachable", func(t *testing.T) {
		t.Parallel()
		addr := testredis.ClosedAddr(t)
		svc, err := redisservice.New(redisservice.Options{URL: "redis://" + addr, Timeout: 300 * time.Millisecond})
		require.NoError(t, err)
		t.Cleanup(func() { _ = svc.Close() })
		st := scsstore.New(svc)
		start := time.Now()
		_, found, err := st.FindCtx(context.Background(), token)
		assert.Less(t, time.Since(start), 3*time.Second, "FindCtx is bounded by the Service's Timeout")
		assert.False(t, found)
		require.Error(t, err)
		assert.Contains(t, err.Error(), "scs.find")
		assert.NotContains(t, err.Error(), token)
		assert.Equal(t, uint64(1), svc.Stats().Errors, "the failure is counted by the Service")
	})
}
