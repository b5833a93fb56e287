package redisservice

import (
	"fmt"
	"net/http"
	"net/netip"
	"sync"

	"github.com/vevurn/redisservice/internal/clientip"
)

// ClientIPResolver finds the client that sent an HTTP request: its
// RemoteAddr without the port, or, when RemoteAddr is a trusted reverse
// proxy, the address the proxies name in their forwarding header, so that
// a client cannot choose its address by sending the header. It is what
// [Service.RateLimitMiddleware] keys requests on by default (see
// [RateLimitConfig.ClientIP]); use the same one in handlers, for example
// to limit a login per client with [Service.AllowAll] or to record a
// session's IP, so that they agree with the middleware.
//
// A ClientIPResolver is immutable and safe for concurrent use. The zero
// value, like a nil pointer, trusts no proxy and keys IPv6 clients on
// their /64: the defaults of [NewClientIPResolver].
type ClientIPResolver struct {
	r *clientip.Resolver // nil: the defaults
}

// NewClientIPResolver returns a ClientIPResolver that believes the header
// forwardedHeader only from trustedProxies. The arguments mean what
// [RateLimitConfig]'s TrustedProxies, ForwardedHeader and IPv6Prefix do,
// defaults included: forwardedHeader "" is X-Forwarded-For ("Forwarded" is
// read as RFC 7239, any other as a comma-separated list of addresses), and
// ipv6Prefix 0 is 64. The header is read from the right, at most 16
// entries of at most 256 bytes each, so that its size bounds the work.
// trustedProxies is copied. An invalid prefix, or an ipv6Prefix outside 0
// to 128, fails with [ErrInvalidArgument].
func NewClientIPResolver(trustedProxies []netip.Prefix, forwardedHeader string, ipv6Prefix int) (*ClientIPResolver, error) {
	r, err := clientip.New(trustedProxies, forwardedHeader, ipv6Prefix)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidArgument, err)
	}
	return &ClientIPResolver{r: r}, nil
}

// ClientIP returns the address of the client that sent r, without a port:
// RemoteAddr, or when RemoteAddr is a trusted proxy, the right-most
// address in the forwarding header that is not a trusted proxy (the last
// trusted proxy read, when the header ends or names no address first).
// IPv4-mapped addresses come back as IPv4, and zones are dropped. It
// returns the zero Addr (check IsValid) when RemoteAddr is not an
// address, as for a Unix socket. It allocates nothing.
func (c *ClientIPResolver) ClientIP(r *http.Request) netip.Addr {
	return c.resolver().ClientIP(r)
}

// Key returns r's client as [Service.RateLimitMiddleware] counts it by
// default: ClientIP as text, with an IPv6 address reduced to its network
// ("2001:db8:1:2::/64" for the default /64), since one host commonly holds
// a whole one. IPv4 addresses are kept whole. When RemoteAddr is not an
// address, Key is RemoteAddr as it is ("unknown" when empty), so that such
// clients share a key rather than escape a limit.
func (c *ClientIPResolver) Key(r *http.Request) string {
	return c.resolver().Key(r)
}

// resolver returns c's resolver, or the default one.
func (c *ClientIPResolver) resolver() *clientip.Resolver {
	if c == nil || c.r == nil {
		return defaultResolver()
	}
	return c.r
}

// defaultResolver is the resolver of the zero ClientIPResolver.
var defaultResolver = sync.OnceValue(func() *clientip.Resolver {
	r, err := clientip.New(nil, "", 0)
	if err != nil {
		panic("redisservice: the default client IP resolver: " + err.Error())
	}
	return r
})
