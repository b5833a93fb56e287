// Package clientip finds the address of the client that sent an HTTP
// request. A forwarding header (X-Forwarded-For, X-Real-IP, Forwarded) is
// believed only from a trusted proxy, and only as far as the proxies in
// it are trusted, so that a client cannot choose its address by sending
// the header. Its work is bounded whatever the header's size.
package clientip

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// The work spent on a forwarding header is bounded whatever its size: it
// is read from the right, at most maxForwardedHops entries, none longer
// than maxForwardedHopLen bytes, so that a header of a megabyte costs what
// a header of a few entries does, and nothing is allocated for it.
const (
	// maxForwardedHops is how many entries, right to left, are examined.
	// Past it the client is keyed on the last trusted proxy examined.
	maxForwardedHops = 16

	// maxForwardedHopLen bounds one entry (an address with a port, or a
	// Forwarded element with its parameters); a longer one is not an
	// address and ends the walk like any other unparsable entry.
	maxForwardedHopLen = 256
)

// A Resolver finds the client of a request (see [Resolver.ClientIP]). It
// is immutable and safe for concurrent use. The zero value is not
// usable: use [New].
type Resolver struct {
	proxies   []netip.Prefix // trusted; unmapped, like the addresses they are compared with
	header    string         // canonical
	forwarded bool           // header is Forwarded (RFC 7239): read its for= parameters
	v6Prefix  int            // 1..128
}

// New returns a Resolver that believes header only from the proxies in
// trusted. header is "X-Forwarded-For" when empty; "Forwarded" is read
// as RFC 7239 (its for= parameters), any other as a comma-separated list
// of addresses. v6Prefix is the length of the network that [Resolver.Key]
// keys an IPv6 client on, 64 when 0. New copies trusted, and fails when
// a prefix is invalid or v6Prefix is outside 0 to 128; its errors name
// the fields of the same meaning in the redisservice API.
func New(trusted []netip.Prefix, header string, v6Prefix int) (*Resolver, error) {
	if v6Prefix == 0 {
		v6Prefix = 64
	}
	if v6Prefix < 1 || v6Prefix > 128 {
		return nil, fmt.Errorf("IPv6Prefix %d not in 1..128", v6Prefix)
	}
	if header == "" {
		header = "X-Forwarded-For"
	}
	header = http.CanonicalHeaderKey(header)
	// Addresses are compared unmapped (see parseHostAddr), so unmap the
	// prefixes too.
	proxies := make([]netip.Prefix, len(trusted))
	for i, p := range trusted {
		if !p.IsValid() {
			return nil, fmt.Errorf("TrustedProxies[%d] %v is not a valid prefix", i, p)
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		proxies[i] = p
	}
	return &Resolver{proxies: proxies, header: header, forwarded: header == "Forwarded", v6Prefix: v6Prefix}, nil
}

// Key returns the rate-limit key of the client that sent req: its
// address (see [Resolver.ClientIP]), with an IPv6 address reduced to its
// network ("2001:db8:1:2::/64") so that one host's addresses share a
// key. IPv4 addresses are kept whole. A RemoteAddr that is not an
// address is the key as it is ("unknown" when empty), so that such
// clients share one key rather than escape a limit. It allocates at most
// the key's text.
func (r *Resolver) Key(req *http.Request) string {
	a := r.ClientIP(req)
	if !a.IsValid() {
		if req.RemoteAddr == "" {
			return "unknown"
		}
		return req.RemoteAddr
	}
	if a.Is6() && r.v6Prefix < 128 {
		p, _ := a.Prefix(r.v6Prefix) // never fails: 0 < v6Prefix <= 128
		return p.String()
	}
	return a.String()
}

// ClientIP returns the address of the client that sent req: RemoteAddr
// without its port, or, when RemoteAddr is a trusted proxy, the right-most
// address in the forwarding header that is not a trusted proxy. The
// header is read from the right, at most 16 entries of at most 256 bytes
// each: after that, or at an entry that is not an address, the client is
// the last trusted proxy read. IPv4-mapped addresses are returned as IPv4
// and zones are dropped. It returns the zero Addr when RemoteAddr is not
// an address.
func (r *Resolver) ClientIP(req *http.Request) netip.Addr {
	remote, ok := parseHostAddr(req.RemoteAddr)
	if !ok || !r.trusted(remote) {
		return remote
	}
	// Walk right to left: every entry right of the first untrusted one was
	// written by a trusted proxy about its peer, so it can be believed.
	// Entries further left may come from the client.
	client := remote
	hops := 0
	lines := req.Header.Values(r.header)
	for l := len(lines) - 1; l >= 0; l-- {
		line := lines[l]
		for {
			if hops == maxForwardedHops {
				return client
			}
			hops++
			elem, rest, ok := lastElem(line)
			if !ok {
				return client
			}
			a, ok := r.hopAddr(elem)
			if !ok {
				// A trusted proxy could not name its peer ("unknown", an
				// obfuscated id, an empty entry): key on that proxy
				// rather than guess.
				return client
			}
			client = a
			if !r.trusted(a) {
				return client
			}
			if rest < 0 {
				break // the line's first entry: go on with the line above
			}
			line = line[:rest]
		}
	}
	return client
}

// lastElem returns the last comma-separated entry of line and the index
// of the comma before it (-1 when it is the first entry). It examines at
// most maxForwardedHopLen+1 bytes, and reports false when the entry is
// longer than that.
func lastElem(line string) (elem string, comma int, ok bool) {
	from := max(len(line)-maxForwardedHopLen-1, 0)
	comma = strings.LastIndexByte(line[from:], ',')
	if comma >= 0 {
		comma += from
	} else if from > 0 {
		return "", 0, false
	}
	return line[comma+1:], comma, true
}

// hopAddr parses one entry of the forwarding header: an address, or for
// the Forwarded header the address in its for= parameter.
func (r *Resolver) hopAddr(elem string) (netip.Addr, bool) {
	if !r.forwarded {
		return parseHostAddr(elem)
	}
	hop := ""
	for elem != "" {
		var pair string
		pair, elem, _ = strings.Cut(elem, ";")
		k, v, _ := strings.Cut(strings.TrimSpace(pair), "=")
		if strings.EqualFold(k, "for") {
			hop = strings.Trim(v, `"`)
		}
	}
	return parseHostAddr(hop)
}

// trusted reports whether a is one of the trusted proxies.
func (r *Resolver) trusted(a netip.Addr) bool {
	for _, p := range r.proxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// parseHostAddr parses an IP address, with or without a port, brackets
// or an IPv6 zone, and returns it in its plain form: IPv4-mapped IPv6
// addresses become IPv4 and zones are dropped, so that one client always
// gets one key.
func parseHostAddr(s string) (netip.Addr, bool) {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > maxForwardedHopLen {
		return netip.Addr{}, false
	}
	host := s
	if s[0] == '[' || strings.Count(s, ":") == 1 {
		// With a port, or bracketed: "192.0.2.1:80", "[2001:db8::1]:80",
		// "[2001:db8::1]". Split only these, so that a well-formed
		// address costs no error value.
		var err error
		if host, _, err = net.SplitHostPort(s); err != nil {
			host = strings.Trim(s, "[]")
		}
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap().WithZone(""), true
}
