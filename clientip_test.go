package redisservice

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// clientCase is one request and the client it comes from, for a resolver
// (or middleware) configured with proxies, header and v6Prefix.
type clientCase struct {
	name     string
	proxies  []netip.Prefix
	header   string // the configured forwarding header; "" is X-Forwarded-For
	v6Prefix int
	remote   string
	headers  []string // sent: name, value pairs
	wantKey  string
	wantIP   string // "" for the zero Addr
}

// clientCases are the ways a client might try to choose its address, and
// the ways proxies name it. The resolver and the middleware must agree on
// every one.
func clientCases() []clientCase {
	lb := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
	spoofs := []struct {
		name    string
		headers []string
	}{
		{"X-Forwarded-For", []string{"X-Forwarded-For", "1.2.3.4"}},
		{"X-Forwarded-For list", []string{"X-Forwarded-For", "5.6.7.8, 9.9.9.9"}},
		{"X-Real-IP", []string{"X-Real-IP", "1.2.3.5"}},
		{"Forwarded", []string{"Forwarded", "for=1.2.3.6"}},
		{"all at once", []string{"X-Forwarded-For", "1.2.3.7", "X-Real-IP", "1.2.3.8", "Forwarded", "for=1.2.3.9"}},
	}
	var cases []clientCase
	for _, sp := range spoofs {
		for _, header := range []string{"", "X-Real-IP", "Forwarded"} {
			cases = append(cases,
				clientCase{name: "no trusted proxy, spoofed " + sp.name + ", reading " + header, header: header,
					remote: "203.0.113.7:1001", headers: sp.headers, wantKey: "203.0.113.7", wantIP: "203.0.113.7"},
				clientCase{name: "untrusted peer, spoofed " + sp.name + ", reading " + header, proxies: lb, header: header,
					remote: "203.0.113.7:1001", headers: sp.headers, wantKey: "203.0.113.7", wantIP: "203.0.113.7"})
		}
	}
	return append(cases,
		clientCase{name: "the port is dropped", remote: "127.0.0.1:56722", wantKey: "127.0.0.1", wantIP: "127.0.0.1"},
		clientCase{name: "ipv6 on its /64", remote: "[2001:db8::1]:5555", wantKey: "2001:db8::/64", wantIP: "2001:db8::1"},
		clientCase{name: "ipv6 on its /48", v6Prefix: 48, remote: "[2001:db8:1:2::1]:5555", wantKey: "2001:db8:1::/48", wantIP: "2001:db8:1:2::1"},
		clientCase{name: "ipv6 whole", v6Prefix: 128, remote: "[2001:db8::1]:5555", wantKey: "2001:db8::1", wantIP: "2001:db8::1"},
		clientCase{name: "ipv4-mapped", remote: "[::ffff:203.0.113.7]:5555", wantKey: "203.0.113.7", wantIP: "203.0.113.7"},
		clientCase{name: "zone dropped", remote: "[fe80::1%eth0]:5555", wantKey: "fe80::/64", wantIP: "fe80::1"},
		clientCase{name: "not an address", remote: "pipe", wantKey: "pipe"},
		clientCase{name: "no RemoteAddr", remote: "", wantKey: "unknown"},

		clientCase{name: "X-Forwarded-For via proxy", proxies: lb, remote: "10.0.0.2:1",
			headers: []string{"X-Forwarded-For", "198.51.100.9"}, wantKey: "198.51.100.9", wantIP: "198.51.100.9"},
		clientCase{name: "X-Forwarded-For: the client prepends a lie", proxies: lb, remote: "10.0.0.2:1",
			headers: []string{"X-Forwarded-For", "1.2.3.4, 198.51.100.9"}, wantKey: "198.51.100.9", wantIP: "198.51.100.9"},
		clientCase{name: "X-Forwarded-For through two proxies, on two lines", proxies: lb, remote: "10.0.0.2:1",
			headers: []string{"X-Forwarded-For", "1.2.3.4", "X-Forwarded-For", "198.51.100.9, 10.1.1.1"}, wantKey: "198.51.100.9", wantIP: "198.51.100.9"},
		clientCase{name: "X-Forwarded-For of proxies only", proxies: lb, remote: "10.0.0.2:1",
			headers: []string{"X-Forwarded-For", "10.3.3.3, 10.1.1.1"}, wantKey: "10.3.3.3", wantIP: "10.3.3.3"},
		clientCase{name: "X-Forwarded-For naming no address", proxies: lb, remote: "10.0.0.2:1",
			headers: []string{"X-Forwarded-For", "1.2.3.4, unknown"}, wantKey: "10.0.0.2", wantIP: "10.0.0.2"},
		clientCase{name: "X-Forwarded-For with a port, ipv6 client", proxies: lb, remote: "[fd00::2]:1",
			headers: []string{"X-Forwarded-For", "[2001:db8::7]:4711, 10.1.1.1:80"}, wantKey: "2001:db8::/64", wantIP: "2001:db8::7"},
		clientCase{name: "X-Forwarded-For proxy, the client's Forwarded ignored", proxies: lb, remote: "10.0.0.2:1",
			headers: []string{"Forwarded", "for=1.2.3.4", "X-Forwarded-For", "198.51.100.9"}, wantKey: "198.51.100.9", wantIP: "198.51.100.9"},
		clientCase{name: "X-Forwarded-For proxy, the client's X-Real-IP ignored", proxies: lb, remote: "10.0.0.2:1",
			headers: []string{"X-Real-IP", "1.2.3.4"}, wantKey: "10.0.0.2", wantIP: "10.0.0.2"},
		clientCase{name: "X-Real-IP via proxy", proxies: lb, header: "x-real-ip", remote: "10.0.0.2:1",
			headers: []string{"X-Real-IP", "198.51.100.9", "X-Forwarded-For", "1.2.3.4"}, wantKey: "198.51.100.9", wantIP: "198.51.100.9"},
		clientCase{name: "Forwarded via proxy", proxies: lb, header: "Forwarded", remote: "10.0.0.2:1",
			headers: []string{"Forwarded", `for=1.2.3.4, for="198.51.100.10:4711";proto=https, For=10.1.1.1`}, wantKey: "198.51.100.10", wantIP: "198.51.100.10"},
		clientCase{name: "Forwarded obfuscated", proxies: lb, header: "Forwarded", remote: "10.0.0.2:1",
			headers: []string{"Forwarded", "for=1.2.3.4, for=_hidden"}, wantKey: "10.0.0.2", wantIP: "10.0.0.2"},
		clientCase{name: "Forwarded proxy, the client's X-Forwarded-For ignored", proxies: lb, header: "Forwarded", remote: "10.0.0.2:1",
			headers: []string{"X-Forwarded-For", "1.2.3.4", "Forwarded", "for=198.51.100.9"}, wantKey: "198.51.100.9", wantIP: "198.51.100.9"},
	)
}

// request returns the case's request.
func (c clientCase) request() *http.Request {
	req := httptest.NewRequest(http.MethodPost, "/login", nil)
	req.RemoteAddr = c.remote
	for i := 0; i+1 < len(c.headers); i += 2 {
		req.Header.Add(c.headers[i], c.headers[i+1])
	}
	return req
}

func TestClientIPResolver(t *testing.T) {
	t.Parallel()
	for _, tt := range clientCases() {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res, err := NewClientIPResolver(tt.proxies, tt.header, tt.v6Prefix)
			require.NoError(t, err)
			req := tt.request()
			assert.Equal(t, tt.wantKey, res.Key(req), "Key(RemoteAddr %q, %v)", tt.remote, req.Header)
			var want netip.Addr
			if tt.wantIP != "" {
				want = netip.MustParseAddr(tt.wantIP)
			}
			assert.Equal(t, want, res.ClientIP(req), "ClientIP(RemoteAddr %q, %v)", tt.remote, req.Header)
		})
	}
}

// TestRateLimitMiddlewareKeysLikeClientIPResolver: the middleware counts
// each case's request under the key the resolver gives, whether it is
// configured with the same fields or given the resolver.
func TestRateLimitMiddlewareKeysLikeClientIPResolver(t *testing.T) {
	t.Parallel()
	for _, tt := range clientCases() {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := newBackend(t, "miniredis")
			s := b.service(t, Options{})
			res, err := NewClientIPResolver(tt.proxies, tt.header, tt.v6Prefix)
			require.NoError(t, err)
			for name, cfg := range map[string]RateLimitConfig{
				"fields":   {TrustedProxies: tt.proxies, ForwardedHeader: tt.header, IPv6Prefix: tt.v6Prefix},
				"ClientIP": {ClientIP: res},
			} {
				cfg.Limit, cfg.Window, cfg.Name = 1, time.Minute, name
				rec := httptest.NewRecorder()
				s.RateLimitMiddleware(cfg)(http.NotFoundHandler()).ServeHTTP(rec, tt.request())
				require.Equal(t, http.StatusNotFound, rec.Code, "%s: the first request reaches the handler", name)
				assert.True(t, b.mr.Exists(b.raw("ratelimit:"+name+":"+tt.wantKey)), "%s: no counter for %q in %v", name, tt.wantKey, b.mr.Keys())
			}
			assert.Len(t, b.mr.Keys(), 2, "one counter per configuration")
		})
	}
}

func TestClientIPResolverZeroValue(t *testing.T) {
	t.Parallel()
	req := clientCase{remote: "10.0.0.2:1", headers: []string{"X-Forwarded-For", "198.51.100.9"}}.request()
	var zero ClientIPResolver
	var none *ClientIPResolver
	for name, res := range map[string]*ClientIPResolver{"zero": &zero, "nil": none} {
		assert.Equal(t, netip.MustParseAddr("10.0.0.2"), res.ClientIP(req), "%s resolver: no proxy is trusted", name)
		assert.Equal(t, "10.0.0.2", res.Key(req), name)
		v6 := clientCase{remote: "[2001:db8::1]:1"}.request()
		assert.Equal(t, "2001:db8::/64", res.Key(v6), "%s resolver: a /64", name)
	}
}

func TestNewClientIPResolverInvalid(t *testing.T) {
	t.Parallel()
	for name, tt := range map[string]struct {
		proxies  []netip.Prefix
		v6Prefix int
	}{
		"invalid prefix":  {[]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), {}}, 0},
		"prefix too long": {nil, 129},
		"negative prefix": {nil, -1},
	} {
		res, err := NewClientIPResolver(tt.proxies, "", tt.v6Prefix)
		assert.ErrorIs(t, err, ErrInvalidArgument, name)
		assert.Nil(t, res, name)
	}
}

// TestClientIPResolverAllocations is not parallel: AllocsPerRun counts
// every allocation in the process.
func TestClientIPResolverAllocations(t *testing.T) {
	res, err := NewClientIPResolver([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, "", 0)
	require.NoError(t, err)
	req := clientCase{remote: "10.0.0.2:1", headers: []string{"X-Forwarded-For", "1.2.3.4, 198.51.100.9"}}.request()
	assert.Zero(t, testing.AllocsPerRun(100, func() { res.ClientIP(req) }), "ClientIP allocations")
}

func TestRateLimitMiddlewareClientIPWithItsFieldsPanics(t *testing.T) {
	t.Parallel()
	s := newBackend(t, "miniredis").service(t, Options{})
	res, err := NewClientIPResolver(nil, "", 0)
	require.NoError(t, err)
	for name, cfg := range map[string]RateLimitConfig{
		"TrustedProxies":  {ClientIP: res, TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
		"ForwardedHeader": {ClientIP: res, ForwardedHeader: "X-Real-IP"},
		"IPv6Prefix":      {ClientIP: res, IPv6Prefix: 48},
	} {
		t.Run(name, func(t *testing.T) {
			cfg.Limit, cfg.Window = 1, time.Minute
			assert.PanicsWithValue(t, "redisservice: RateLimitMiddleware: cfg.ClientIP with TrustedProxies, ForwardedHeader or IPv6Prefix: give them to NewClientIPResolver",
				func() { s.RateLimitMiddleware(cfg) })
		})
	}
}
