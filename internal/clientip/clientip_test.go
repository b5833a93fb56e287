package clientip

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestKey: the key of a request's client, for every way a client might
// try to choose its own.
func TestKey(t *testing.T) {
	t.Parallel()
	proxies := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
	tests := []struct {
		name    string
		remote  string
		header  string // the header argument of New; "" is X-Forwarded-For
		proxies []netip.Prefix
		headers []string
		want    string
	}{
		{name: "ipv4 with port", remote: "203.0.113.7:5555", want: "203.0.113.7"},
		{name: "ipv6 with port", remote: "[2001:db8::1]:5555", want: "2001:db8::/64"},
		{name: "ipv6 with zone", remote: "[fe80::1%eth0]:5555", want: "fe80::/64"},
		{name: "ipv6 same /64", remote: "[2001:db8::ffff:1:2:3]:5555", want: "2001:db8::/64"},
		{name: "ipv6 other /64", remote: "[2001:db8:0:1::1]:5555", want: "2001:db8:0:1::/64"},
		{name: "ipv4-mapped ipv6", remote: "[::ffff:203.0.113.7]:5555", want: "203.0.113.7"},
		{name: "no port", remote: "203.0.113.7", want: "203.0.113.7"},
		{name: "unparsable", remote: "pipe", want: "pipe"},
		{name: "empty", remote: "", want: "unknown"},

		// No trusted proxies: every forwarding header is ignored.
		{name: "spoofed XFF", remote: "203.0.113.7:1", headers: []string{"X-Forwarded-For", "1.2.3.4"}, want: "203.0.113.7"},
		{name: "spoofed X-Real-IP", remote: "203.0.113.7:1", headers: []string{"X-Real-IP", "1.2.3.4"}, want: "203.0.113.7"},
		{name: "spoofed Forwarded", remote: "203.0.113.7:1", headers: []string{"Forwarded", "for=1.2.3.4"}, want: "203.0.113.7"},
		// Trusted proxies, but the request does not come from one.
		{name: "XFF from an untrusted peer", remote: "203.0.113.7:1", proxies: proxies,
			headers: []string{"X-Forwarded-For", "1.2.3.4"}, want: "203.0.113.7"},

		// From a trusted proxy: the right-most untrusted address.
		{name: "XFF via proxy", remote: "10.0.0.2:1", proxies: proxies,
			headers: []string{"X-Forwarded-For", "198.51.100.9"}, want: "198.51.100.9"},
		{name: "XFF client prepends a lie", remote: "10.0.0.2:1", proxies: proxies,
			headers: []string{"X-Forwarded-For", "1.2.3.4, 198.51.100.9"}, want: "198.51.100.9"},
		{name: "XFF through two proxies", remote: "10.0.0.2:1", proxies: proxies,
			headers: []string{"X-Forwarded-For", "1.2.3.4, 198.51.100.9, 10.1.1.1"}, want: "198.51.100.9"},
		{name: "XFF on several lines", remote: "10.0.0.2:1", proxies: proxies,
			headers: []string{"X-Forwarded-For", "1.2.3.4", "X-Forwarded-For", "198.51.100.9, 10.1.1.1"}, want: "198.51.100.9"},
		{name: "XFF with ports and ipv6", remote: "[fd00::2]:1", proxies: proxies,
			headers: []string{"X-Forwarded-For", "[2001:db8::7]:4711, 10.1.1.1:80"}, want: "2001:db8::/64"},
		{name: "XFF all trusted", remote: "10.0.0.2:1", proxies: proxies,
			headers: []string{"X-Forwarded-For", "10.3.3.3, 10.1.1.1"}, want: "10.3.3.3"},
		{name: "XFF garbage from the proxy", remote: "10.0.0.2:1", proxies: proxies,
			headers: []string{"X-Forwarded-For", "1.2.3.4, unknown"}, want: "10.0.0.2"},
		{name: "XFF missing", remote: "10.0.0.2:1", proxies: proxies, want: "10.0.0.2"},
		{name: "4in6 prefix", remote: "10.0.0.2:1",
			proxies: []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")},
			headers: []string{"X-Forwarded-For", "198.51.100.9"}, want: "198.51.100.9"},

		// Only the configured header is read.
		{name: "XFF proxy, client's Forwarded ignored", remote: "10.0.0.2:1", proxies: proxies,
			headers: []string{"Forwarded", "for=1.2.3.4", "X-Forwarded-For", "198.51.100.9"}, want: "198.51.100.9"},
		{name: "XFF proxy, client's X-Real-IP ignored", remote: "10.0.0.2:1", proxies: proxies,
			headers: []string{"X-Real-IP", "1.2.3.4"}, want: "10.0.0.2"},
		{name: "X-Real-IP proxy", remote: "10.0.0.2:1", proxies: proxies, header: "x-real-ip",
			headers: []string{"X-Real-IP", "198.51.100.9", "X-Forwarded-For", "1.2.3.4"}, want: "198.51.100.9"},
		{name: "Forwarded proxy", remote: "10.0.0.2:1", proxies: proxies, header: "Forwarded",
			headers: []string{"Forwarded", `for=1.2.3.4, for="[2001:db8:cafe::17]:4711";proto=https, For=10.1.1.1`},
			want:    "2001:db8:cafe::/64"},
		{name: "Forwarded obfuscated", remote: "10.0.0.2:1", proxies: proxies, header: "Forwarded",
			headers: []string{"Forwarded", "for=1.2.3.4, for=_hidden"}, want: "10.0.0.2"},
		{name: "Forwarded proxy, client's XFF ignored", remote: "10.0.0.2:1", proxies: proxies, header: "Forwarded",
			headers: []string{"X-Forwarded-For", "1.2.3.4", "Forwarded", "for=198.51.100.9"}, want: "198.51.100.9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res, err := New(tt.proxies, tt.header, 0)
			require.NoError(t, err)
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.RemoteAddr = tt.remote
			for i := 0; i+1 < len(tt.headers); i += 2 {
				req.Header.Add(tt.headers[i], tt.headers[i+1])
			}
			assert.Equal(t, tt.want, res.Key(req), "Key(RemoteAddr %q, %v)", tt.remote, req.Header)
		})
	}
}

// TestClientIPBoundedWork is not parallel: AllocsPerRun counts every
// allocation in the process.
func TestClientIPBoundedWork(t *testing.T) {
	proxies := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	xff, err := New(proxies, "", 0)
	require.NoError(t, err)
	fwd, err := New(proxies, "Forwarded", 0)
	require.NoError(t, err)
	trustedHops := strings.Repeat("10.9.9.9, ", 1<<16)
	for _, tt := range []struct {
		name   string
		res    *Resolver
		header string
		want   string
	}{
		{"64KB of commas", xff, strings.Repeat(",", 64<<10) + "203.0.113.99", "203.0.113.99"},
		{"1MB of commas", xff, strings.Repeat(",", 1<<20) + "203.0.113.99", "203.0.113.99"},
		{"1MB of commas last", xff, "203.0.113.99" + strings.Repeat(",", 1<<20), "10.0.0.2"},
		{"1MB without a comma", xff, strings.Repeat("1", 1<<20), "10.0.0.2"},
		{"640KB of trusted hops", xff, trustedHops + "10.1.1.1", "10.9.9.9"},
		{"1MB Forwarded", fwd, "for=203.0.113.99, " + strings.Repeat("for=1.2.3.4;", 1<<16), "10.0.0.2"},
		{"Forwarded commas", fwd, strings.Repeat(",", 1<<20) + "for=203.0.113.99", "203.0.113.99"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.RemoteAddr = "10.0.0.2:1"
			req.Header.Set(tt.res.header, tt.header)
			require.Equal(t, tt.want, tt.res.Key(req))
			allocs := testing.AllocsPerRun(20, func() { tt.res.Key(req) })
			assert.LessOrEqual(t, allocs, 1.0, "allocations per request (the key's text)")
			start := time.Now()
			const runs = 50
			for range runs {
				tt.res.Key(req)
			}
			per := time.Since(start) / runs
			t.Logf("%d-byte header: %v and %.0f allocations per request", len(tt.header), per, allocs)
			assert.Less(t, per, time.Millisecond, "time per request")
		})
	}
}

// request returns a GET from remote with headers (name, value pairs).
func request(remote string, headers ...string) *http.Request {
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.RemoteAddr = remote
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	return req
}

func TestClientIP(t *testing.T) {
	t.Parallel()
	res, err := New([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, "", 0)
	require.NoError(t, err)
	tests := []struct {
		name    string
		remote  string
		headers []string
		want    netip.Addr // the zero Addr: RemoteAddr is not an address
	}{
		{"ipv4", "203.0.113.7:5555", nil, netip.MustParseAddr("203.0.113.7")},
		{"ipv6 whole", "[2001:db8::1]:5555", nil, netip.MustParseAddr("2001:db8::1")},
		{"zone dropped", "[fe80::1%eth0]:5555", nil, netip.MustParseAddr("fe80::1")},
		{"ipv4-mapped", "[::ffff:203.0.113.7]:5555", nil, netip.MustParseAddr("203.0.113.7")},
		{"via proxy", "10.0.0.2:1", []string{"X-Forwarded-For", "1.2.3.4, 198.51.100.9"}, netip.MustParseAddr("198.51.100.9")},
		{"spoofed", "203.0.113.7:1", []string{"X-Forwarded-For", "1.2.3.4"}, netip.MustParseAddr("203.0.113.7")},
		{"unparsable", "pipe", nil, netip.Addr{}},
		{"empty", "", nil, netip.Addr{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tt.want, res.ClientIP(request(tt.remote, tt.headers...)), "ClientIP(%q, %v)", tt.remote, tt.headers)
		})
	}
}

func TestKeyIPv6Prefix(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		bits int
		want string
	}{
		{0, "2001:db8:1:2::/64"}, // the default
		{48, "2001:db8:1::/48"},
		{127, "2001:db8:1:2:3:4:5:6/127"},
		{128, "2001:db8:1:2:3:4:5:7"},
		{1, "::/1"},
	} {
		res, err := New(nil, "", tt.bits)
		require.NoError(t, err)
		assert.Equal(t, tt.want, res.Key(request("[2001:db8:1:2:3:4:5:7]:1")), "Key with v6Prefix %d", tt.bits)
		assert.Equal(t, "203.0.113.7", res.Key(request("203.0.113.7:1")), "an IPv4 key with v6Prefix %d", tt.bits)
	}
}

func TestNew(t *testing.T) {
	t.Parallel()
	t.Run("defaults", func(t *testing.T) {
		t.Parallel()
		res, err := New(nil, "", 0)
		require.NoError(t, err)
		assert.Equal(t, "X-Forwarded-For", res.header)
		assert.Equal(t, 64, res.v6Prefix)
		assert.False(t, res.forwarded)
		res, err = New(nil, "forwarded", 0)
		require.NoError(t, err)
		assert.Equal(t, "Forwarded", res.header, "the header name is canonical")
		assert.True(t, res.forwarded)
	})
	t.Run("invalid", func(t *testing.T) {
		t.Parallel()
		good := netip.MustParsePrefix("10.0.0.0/8")
		for _, tt := range []struct {
			name     string
			trusted  []netip.Prefix
			v6Prefix int
			want     string
		}{
			{"prefix too long", nil, 129, "IPv6Prefix 129 not in 1..128"},
			{"negative prefix", nil, -1, "IPv6Prefix -1 not in 1..128"},
			{"invalid proxy", []netip.Prefix{good, {}}, 0, "TrustedProxies[1] invalid Prefix is not a valid prefix"},
		} {
			res, err := New(tt.trusted, "", tt.v6Prefix)
			assert.Nil(t, res, tt.name)
			assert.EqualError(t, err, tt.want, tt.name)
		}
	})
	t.Run("copies the proxies", func(t *testing.T) {
		t.Parallel()
		trusted := []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")}
		res, err := New(trusted, "", 0)
		require.NoError(t, err)
		assert.Equal(t, netip.MustParsePrefix("::ffff:10.0.0.0/104"), trusted[0], "the caller's slice is left as it was")
		trusted[0] = netip.MustParsePrefix("192.0.2.0/24")
		req := request("10.0.0.2:1", "X-Forwarded-For", "198.51.100.9")
		assert.Equal(t, "198.51.100.9", res.Key(req), "the proxy, unmapped, is still trusted after the caller's slice changed")
	})
}
